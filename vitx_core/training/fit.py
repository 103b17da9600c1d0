"""The training loop: AdamW, warmup + cosine / step LR, gradient clipping, optional class balancing,
early stopping on validation AUROC (macro) with the best weights kept; deterministic given a seed.

:func:`fit` trains ``adapter.model`` in place (any timm / Hugging Face ViT wrapped in a
:class:`~vitx_core.VitAdapter`) and leaves it in ``eval()`` mode with the best weights loaded.
"""

from __future__ import annotations

import copy
import math
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, RandomSampler, WeightedRandomSampler

from ..adapters.base import VitAdapter
from .augment import AugmentConfig, augment_batch
from .data import balanced_weights, normalise_batch
from .metrics import macro_auroc


@dataclass
class TrainConfig:
    """Options of :func:`fit` (all JSON-able; stored in the model card).

    Attributes:
        epochs: passes over the training set (an upper bound with early stopping / budgets).
        batch_size, lr, weight_decay: AdamW settings (no decay on biases, norms, embeddings).
        schedule: ``cosine`` (to ``min_lr_ratio * lr``) or ``step`` (x ``gamma`` every
            ``step_epochs``), both after a linear warmup of ``warmup_epochs`` (fractions allowed).
        grad_clip: max global gradient norm (0 = off).
        balance: draw training images through a class-balanced weighted sampler.
        patience: stop after this many evaluations without a better validation AUROC (0 = never).
        min_delta: an improvement must exceed this.
        seed: seeds model-independent randomness (shuffling, sampler, augmentation, dropout).
        augment: augmentation ranges (``None`` = none).
        label_smoothing: for single-label cross-entropy.
        max_steps / max_minutes: hard budgets (the schedule is stretched over the budget).
        eval_every: evaluate every N optimiser steps (default: once per epoch).
        num_workers: DataLoader workers (0 = main process, deterministic and cached).
        threads: ``torch.set_num_threads`` during training (``None`` = leave as is).
        progress: tqdm progress bars on stderr.
    """

    epochs: int = 10
    batch_size: int = 32
    lr: float = 5e-4
    weight_decay: float = 0.05
    schedule: Literal["cosine", "step"] = "cosine"
    warmup_epochs: float = 1.0
    min_lr_ratio: float = 0.01
    step_epochs: float = 3.0
    gamma: float = 0.1
    grad_clip: float = 1.0
    balance: bool = False
    patience: int = 5
    min_delta: float = 0.0
    seed: int = 0
    augment: AugmentConfig | None = field(default_factory=AugmentConfig)
    label_smoothing: float = 0.0
    max_steps: int | None = None
    max_minutes: float | None = None
    eval_every: int | None = None
    num_workers: int = 0
    threads: int | None = None
    progress: bool = True

    def to_dict(self) -> dict:
        d = asdict(self)
        d["augment"] = self.augment.to_dict() if self.augment is not None else None
        return d


@dataclass
class FitResult:
    """What :func:`fit` did: per-evaluation history, the best validation AUROC and where."""

    history: list[dict[str, Any]]
    best_metric: float
    best_step: int
    best_epoch: float
    steps: int
    epochs_run: float
    stopped_early: bool
    stop_reason: str
    wall_s: float
    schedule_compressed: bool
    train_losses: list[float]
    config: dict[str, Any]

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("train_losses")
        return d


# ---- pieces ----------------------------------------------------------------------------------
def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA), numpy's legacy global RNG and Python's ``random``."""
    import random

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: no weight decay on biases, norm weights, position / class tokens."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim <= 1 or name.endswith((".bias", "pos_embed", "cls_token", "dist_token",
                                         "reg_token", "position_embeddings")):
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def lr_factor(step: int, total: int, warmup: int, cfg: TrainConfig, steps_per_epoch: int) -> float:
    """LR multiplier at optimiser ``step`` (0-based) of ``total``: linear warmup, then cosine to
    ``min_lr_ratio`` or step decay by ``gamma`` every ``step_epochs``."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if cfg.schedule == "step":
        every = max(1, round(cfg.step_epochs * steps_per_epoch))
        return cfg.gamma ** ((step - warmup) // every)
    span = max(1, total - warmup)
    t = min(1.0, (step - warmup) / span)
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))


def compute_loss(logits: Tensor, y: Tensor, multi_label: bool, label_smoothing: float = 0.0
                 ) -> Tensor:
    """BCE-with-logits (multi-label) or cross-entropy on the class index (single label)."""
    if multi_label:
        return F.binary_cross_entropy_with_logits(logits.float(), y.float())
    return F.cross_entropy(logits.float(), y.argmax(dim=1), label_smoothing=label_smoothing)


@torch.no_grad()
def predict(adapter: VitAdapter, dataset: Dataset, *, batch_size: int = 64,
            progress: bool = False, desc: str = "predict") -> tuple[np.ndarray, np.ndarray]:
    """Probabilities ``(N, C)`` (sigmoid or softmax, as the adapter) and targets ``(N, C)``."""
    from tqdm import tqdm

    model = adapter.model
    was_training = model.training
    model.eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0)
    probs, ys = [], []
    try:
        for x, y in tqdm(loader, desc=desc, leave=False, disable=not progress, file=sys.stderr,
                         dynamic_ncols=True):
            x = normalise_batch(x.to(adapter.device), adapter.preprocess)
            logits = adapter._forward(x).float()
            probs.append(adapter.probabilities(logits).cpu())
            ys.append(y.float())
    finally:
        model.train(was_training)
    if not probs:
        n = adapter.num_classes
        return np.zeros((0, n), np.float32), np.zeros((0, n), np.float32)
    return torch.cat(probs).numpy(), torch.cat(ys).numpy()


class _Infinite:
    """Batches forever from a DataLoader (epochs counted as they roll over)."""

    def __init__(self, loader: DataLoader) -> None:
        self.loader = loader
        self.epoch = 0
        self._it = iter(loader)

    def next(self) -> tuple[Tensor, Tensor]:
        try:
            return next(self._it)
        except StopIteration:
            self.epoch += 1
            self._it = iter(self.loader)
            return next(self._it)


# ---- the loop --------------------------------------------------------------------------------
def fit(adapter: VitAdapter, train: Dataset, val: Dataset | None, config: TrainConfig | None = None,
        *, on_eval: Callable[[dict], None] | None = None) -> FitResult:
    """Train ``adapter.model`` on ``train``; evaluate on ``val`` (macro AUROC) for early stopping.

    ``train`` / ``val`` yield ``(x, target)``: ``x`` a ``(3, H, W)`` image in [0, 1] at the model's
    input size (normalised here with the adapter's :class:`PreprocessSpec` after augmentation),
    ``target`` a 0/1 vector over the classes. The best weights (highest validation AUROC; the last
    ones without ``val``) are loaded back at the end and the model is left in ``eval()`` mode.
    """
    from tqdm import tqdm

    cfg = config or TrainConfig()
    if cfg.batch_size < 1 or cfg.epochs < 1 or cfg.lr <= 0:
        raise ValueError("batch_size and epochs must be >= 1 and lr > 0")
    old_threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    t0 = time.perf_counter()
    try:
        seed_everything(cfg.seed)
        model = adapter.model
        device = adapter.device
        n_train = len(train)
        if n_train == 0:
            raise ValueError("the training set is empty")
        gen = torch.Generator().manual_seed(cfg.seed)
        aug_gen = torch.Generator().manual_seed(cfg.seed + 1)
        if cfg.balance:
            targets = getattr(train, "targets", None)
            if targets is None:
                targets = torch.stack([train[i][1] for i in range(n_train)])
            sampler = WeightedRandomSampler(balanced_weights(targets), num_samples=n_train,
                                            replacement=True, generator=gen)
        else:
            sampler = RandomSampler(train, generator=gen)
        bs = min(cfg.batch_size, n_train)
        loader = DataLoader(train, batch_size=bs, sampler=sampler, drop_last=n_train >= 2 * bs,
                            num_workers=cfg.num_workers,
                            generator=gen if cfg.num_workers else None,
                            persistent_workers=cfg.num_workers > 0)
        steps_per_epoch = max(1, len(loader))
        total = cfg.epochs * steps_per_epoch
        if cfg.max_steps is not None:
            total = min(total, int(cfg.max_steps))
        warmup = min(total // 2, round(cfg.warmup_epochs * steps_per_epoch))
        eval_every = int(cfg.eval_every or steps_per_epoch)
        budget_s = cfg.max_minutes * 60.0 if cfg.max_minutes else None

        opt = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr)
        best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        best, best_step, best_epoch = -math.inf, 0, 0.0
        bad_evals = 0
        history: list[dict[str, Any]] = []
        losses: list[float] = []
        stop_reason = "completed"
        stopped_early = False
        compressed = False
        batches = _Infinite(loader)
        model.train()
        pbar = tqdm(total=total, desc="train", unit="step", disable=not cfg.progress,
                    file=sys.stderr, dynamic_ncols=True)
        step = 0
        window: list[float] = []
        try:
            while step < total:
                x, y = batches.next()
                x = x.to(device)
                if cfg.augment is not None:
                    x = augment_batch(x, cfg.augment, aug_gen)
                x = normalise_batch(x, adapter.preprocess)
                # the schedule is defined on the planned total; a time budget stretches it
                frac_total = total
                if budget_s is not None and step > 0:
                    el = time.perf_counter() - t0
                    est = int(step / max(el, 1e-6) * budget_s)
                    if el > 0.05 * budget_s and est < total:
                        frac_total = max(step + 1, est)
                        compressed = True
                f = lr_factor(step, frac_total, warmup, cfg, steps_per_epoch)
                for g in opt.param_groups:
                    g["lr"] = cfg.lr * f
                logits = adapter._forward(x)
                loss = compute_loss(logits, y.to(device), adapter.multi_label, cfg.label_smoothing)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.grad_clip and cfg.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                opt.step()
                step += 1
                lv = float(loss.detach())
                losses.append(lv)
                window.append(lv)
                pbar.update(1)
                if step % 10 == 0:
                    pbar.set_postfix(loss=f"{np.mean(window):.4f}", lr=f"{cfg.lr * f:.2e}")
                    window = []
                over_budget = budget_s is not None and time.perf_counter() - t0 >= budget_s
                last = step >= total or over_budget
                if step % eval_every == 0 or last:
                    rec: dict[str, Any] = {
                        "step": step, "epoch": round(step / steps_per_epoch, 4),
                        "train_loss": float(np.mean(losses[-min(len(losses), eval_every):])),
                        "lr": cfg.lr * f, "elapsed_s": round(time.perf_counter() - t0, 2)}
                    if val is not None and len(val) > 0:
                        probs, targets = predict(adapter, val, batch_size=max(bs, 64))
                        model.train()
                        rec["val_loss"] = float(_prob_loss(probs, targets, adapter.multi_label))
                        rec["val_auroc"] = macro_auroc(targets, probs, adapter.multi_label)
                        metric = rec["val_auroc"]
                        metric = -rec["val_loss"] if math.isnan(metric) else metric
                    else:
                        metric = -rec["train_loss"]
                    improved = metric > best + cfg.min_delta
                    rec["improved"] = bool(improved)
                    history.append(rec)
                    if improved:
                        best, best_step, best_epoch = metric, step, rec["epoch"]
                        best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                        bad_evals = 0
                    else:
                        bad_evals += 1
                    shown = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in rec.items()}
                    if cfg.progress:
                        tqdm.write(f"eval {shown}", file=sys.stderr)
                    if on_eval is not None:
                        on_eval(rec)
                    if cfg.patience and bad_evals >= cfg.patience and not last:
                        stopped_early = True
                        stop_reason = (f"early stop: no validation improvement in {bad_evals} "
                                       "evaluations")
                        break
                if over_budget:
                    stop_reason = f"time budget of {cfg.max_minutes} min reached"
                    break
            else:
                if cfg.max_steps is not None and total == cfg.max_steps:
                    stop_reason = f"max_steps {cfg.max_steps} reached"
        finally:
            pbar.close()
        model.load_state_dict(best_state)
        model.eval()
        adapter.__dict__.pop("version", None)  # weights changed: recompute the content hash
        return FitResult(history=history, best_metric=float(best), best_step=best_step,
                         best_epoch=best_epoch, steps=step,
                         epochs_run=round(step / steps_per_epoch, 4), stopped_early=stopped_early,
                         stop_reason=stop_reason, wall_s=round(time.perf_counter() - t0, 2),
                         schedule_compressed=compressed,
                         train_losses=losses, config=cfg.to_dict())
    finally:
        if cfg.threads:
            torch.set_num_threads(old_threads)


def _prob_loss(probs: np.ndarray, targets: np.ndarray, multi_label: bool) -> float:
    p = np.clip(probs.astype(np.float64), 1e-7, 1 - 1e-7)
    if multi_label:
        return float(-(targets * np.log(p) + (1 - targets) * np.log(1 - p)).mean())
    return float(-np.log(p[np.arange(len(p)), targets.argmax(1)]).mean())


def state_copy(model: torch.nn.Module) -> dict[str, Tensor]:
    return copy.deepcopy({k: v.detach() for k, v in model.state_dict().items()})
