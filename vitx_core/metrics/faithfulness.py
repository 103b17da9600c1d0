"""Faithfulness and sanity checks that need the model (precomputed, not in the click path).

* :func:`deletion_insertion` -- Petsiuk et al. (RISE, 2018) deletion / insertion curves over
  **patches**: patches are removed from (deletion) or inserted into (insertion) the model input in
  decreasing order of the map, replaced by a baseline image (blurred or per-channel mean), and the
  target's raw logit (or probability) is recorded after each step.
* :func:`randomize_model` / :func:`randomisation_check` -- Adebayo et al. (NeurIPS 2018)
  model-parameter randomisation: maps of a model whose weights were re-initialised (cascading from
  the top: head, then the last blocks ...; or all weights) should differ from the trained model's
  maps; reported as the Spearman rank correlation of the two patch grids per method (low = the
  method is sensitive to the weights, as it should be).

Policies:

* Patch order: descending map value; ties broken by row-major index (stable sort), so a
  constant map deletes in raster order.
* Normalised curve: ``(s_k - s_base) / (s_full - s_base)`` where ``s_full`` is the intact image's
  score and ``s_base`` the all-baseline image's; the AUC (trapezoid over the deleted / inserted
  fraction in [0, 1]) of that curve is ``nauc``. NaN when ``|s_full - s_base| < 1e-6``.
  Deletion: lower is better; insertion: higher is better.
* Spearman of a constant map is NaN (no ranking), never 0.
"""

from __future__ import annotations

import copy
import math
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

Baseline = Literal["blur", "mean"]
ScoreKind = Literal["logit", "prob"]


@dataclass(frozen=True)
class PerturbationCurve:
    """One deletion or insertion curve.

    Attributes:
        mode: ``deletion`` | ``insertion``.
        fractions: ``(S + 1,)`` share of patches removed / inserted.
        scores: ``(S + 1,)`` target score after each step.
        auc: trapezoid AUC of ``scores`` over ``fractions``.
        nauc: AUC of the normalised curve (see module docstring), NaN when undefined.
    """

    mode: str
    fractions: np.ndarray
    scores: np.ndarray
    auc: float
    nauc: float


def _gaussian_kernel(sigma: float) -> Tensor:
    r = max(1, math.ceil(3 * sigma))
    x = torch.arange(-r, r + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def blur(x: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur of ``(3, H, W)`` (reflect padding)."""
    k = _gaussian_kernel(sigma).to(x)
    r = (k.numel() - 1) // 2
    c = x.shape[0]
    y = x[None]
    pad_h, pad_w = min(r, x.shape[1] - 1), min(r, x.shape[2] - 1)
    if pad_w > 0:
        y = torch.nn.functional.pad(y, (pad_w, pad_w, 0, 0), mode="reflect")
        kk = k[r - pad_w: r + pad_w + 1]
        y = torch.nn.functional.conv2d(y, kk.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    if pad_h > 0:
        y = torch.nn.functional.pad(y, (0, 0, pad_h, pad_h), mode="reflect")
        kk = k[r - pad_h: r + pad_h + 1]
        y = torch.nn.functional.conv2d(y, kk.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)
    return y[0]


def baseline_image(x: Tensor, kind: Baseline = "blur", *, sigma: float = 8.0) -> Tensor:
    """The image that replaces removed patches: Gaussian ``blur`` (sigma in input pixels) or the
    per-channel ``mean`` of ``x``."""
    if kind == "blur":
        return blur(x, sigma)
    if kind == "mean":
        return x.mean(dim=(1, 2), keepdim=True).expand_as(x).clone()
    raise ValueError(f"unknown baseline {kind!r}; use 'blur' or 'mean'")


def patch_order(grid: np.ndarray) -> np.ndarray:
    """Patch indices (row-major) by descending value; ties by index (stable)."""
    g = np.asarray(grid, dtype=np.float64).ravel()
    return np.argsort(-g, kind="stable")


def _scores(adapter: Any, xs: Tensor, target: int, score: ScoreKind, batch_size: int) -> np.ndarray:
    out = []
    for i in range(0, xs.shape[0], batch_size):
        logits = adapter.logits(xs[i:i + batch_size])
        s = adapter.probabilities(logits) if score == "prob" else logits
        out.append(s[:, target].detach().float().cpu().numpy())
    return np.concatenate(out).astype(np.float64)


def deletion_insertion(adapter: Any, x: Tensor, grid: np.ndarray, target: int, *,
                       steps: int = 16, baseline: Baseline = "blur", score: ScoreKind = "logit",
                       batch_size: int = 16, sigma: float | None = None
                       ) -> dict[str, PerturbationCurve]:
    """Deletion and insertion curves of one map.

    Args:
        adapter: the model (:class:`~vitx_core.adapters.base.VitAdapter`).
        x: the preprocessed model input ``(3, H, W)``.
        grid: the map on the patch grid ``(gh, gw)`` (``Explanation.grid``).
        target: class index whose score is tracked.
        steps: number of perturbation steps (``k`` patches per step, ``steps <= gh gw``).
        baseline: ``blur`` (Gaussian, sigma = patch size unless given) or ``mean``.
        score: ``logit`` (raw, default) or ``prob``.

    Returns:
        ``{"deletion": PerturbationCurve, "insertion": PerturbationCurve}``.
    """
    g = np.asarray(grid)
    gh, gw = g.shape
    ph, pw = adapter.patch_size
    n = gh * gw
    steps = int(min(max(steps, 1), n))
    xb = baseline_image(x, baseline, sigma=float(sigma or max(ph, pw)))
    order = patch_order(g)
    counts = np.round(np.linspace(0, n, steps + 1)).astype(int)
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n)
    cell = torch.from_numpy(rank.reshape(gh, gw))
    H, W = x.shape[-2:]
    # patch rank per input pixel (pixels beyond the grid keep the original image)
    pix = torch.full((H, W), n, dtype=torch.long)
    pix[: gh * ph, : gw * pw] = cell.repeat_interleave(ph, 0).repeat_interleave(pw, 1)
    masks = torch.stack([(pix < int(c)) for c in counts]).to(x.dtype)[:, None]  # (S+1, 1, H, W)
    dele = x[None] * (1 - masks) + xb[None] * masks
    ins = xb[None] * (1 - masks) + x[None] * masks
    s_del = _scores(adapter, dele, target, score, batch_size)
    s_ins = _scores(adapter, ins, target, score, batch_size)
    frac = counts / n
    s_full, s_base = s_del[0], s_del[-1]
    out = {}
    for mode, s in (("deletion", s_del), ("insertion", s_ins)):
        auc = float(np.trapezoid(s, frac))
        if abs(s_full - s_base) < 1e-6:
            nauc = math.nan
        else:
            nauc = float(np.trapezoid((s - s_base) / (s_full - s_base), frac))
        out[mode] = PerturbationCurve(mode, frac, s, auc, nauc)
    return out


# ---- model parameter randomisation ----------------------------------------------------------
_BLOCK = re.compile(r"(?:^|\.)(?:blocks|layers?)\.(\d+)\.")
_EMBED = re.compile(r"(?:^|\.)(?:patch_embed|embeddings|cls_token|pos_embed|reg_token|dist_token)"
                    r"(?:\.|$)")


def parameter_groups(model: torch.nn.Module) -> list[tuple[str, list[str]]]:
    """Parameters grouped from the top of the network down: ``head`` (everything after the
    blocks: norms, pooler, classifier), ``block{L-1}`` ... ``block0``, ``embed``. Blocks are found
    by name (``blocks.i.`` in timm, ``layer.i.`` / ``layers.i.`` in Hugging Face)."""
    head: list[str] = []
    embed: list[str] = []
    blocks: dict[int, list[str]] = {}
    for name, _ in model.named_parameters():
        m = _BLOCK.search(name)
        if m:
            blocks.setdefault(int(m.group(1)), []).append(name)
        elif _EMBED.search(name):
            embed.append(name)
        else:
            head.append(name)
    groups = [("head", head)]
    groups += [(f"block{i}", blocks[i]) for i in sorted(blocks, reverse=True)]
    groups.append(("embed", embed))
    return [(k, v) for k, v in groups if v]


def cascade_stages(model: torch.nn.Module) -> list[str]:
    """Names of the cascading stages: ``head``, ``top1`` (head + last block), ``top2`` ...,
    ``all`` (every parameter, embeddings included)."""
    groups = parameter_groups(model)
    nblocks = sum(1 for k, _ in groups if k.startswith("block"))
    return ["head", *[f"top{k}" for k in range(1, nblocks + 1)], "all"]


def _stage_params(model: torch.nn.Module, stage: str, mode: str) -> set[str]:
    groups = parameter_groups(model)
    names = [k for k, _ in groups]
    by = dict(groups)
    if stage == "all":
        return {p for _, v in groups for p in v}
    if mode == "independent":
        if stage not in by:
            raise ValueError(f"unknown group {stage!r}; known: {names}")
        return set(by[stage])
    if stage == "head":
        k = 0
    elif stage.startswith("top") and stage[3:].isdigit():
        k = int(stage[3:])
    else:
        raise ValueError(f"unknown cascading stage {stage!r}; use head, top<k> or all")
    chosen = [g for g in groups if g[0] == "head"]
    chosen += [g for g in groups if g[0].startswith("block")][:k]
    return {p for _, v in chosen for p in v}


def randomize_model(model: torch.nn.Module, stage: str = "all", *, mode: str = "cascading",
                    seed: int = 0) -> torch.nn.Module:
    """A deep copy of ``model`` with some parameters re-initialised (the original is untouched).

    Args:
        stage: cascading: ``head``, ``top<k>`` (head + the last k blocks) or ``all``;
            independent: a group name from :func:`parameter_groups` (``block3``) or ``all``.
        mode: ``cascading`` (from the top down) or ``independent`` (one group only).

    Re-initialisation: matrices and higher-rank tensors ~ N(0, std of the original tensor);
    vectors (biases, norm scales) ~ N(mean, std of the original) -- norm scales stay near 1.
    """
    if mode not in ("cascading", "independent"):
        raise ValueError(f"mode must be 'cascading' or 'independent', got {mode!r}")
    chosen = _stage_params(model, stage, mode)
    m = copy.deepcopy(model).eval()
    gen = torch.Generator().manual_seed(int(seed))
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name not in chosen:
                continue
            t = p.detach().float().cpu()
            std = float(t.std()) if t.numel() > 1 else 0.0
            std = std if std > 0 else 0.02
            mean = float(t.mean()) if p.ndim <= 1 else 0.0
            r = torch.randn(p.shape, generator=gen) * std + mean
            p.copy_(r.to(p.dtype).to(p.device))
    return m


def randomized_adapter(adapter: Any, stage: str = "all", *, mode: str = "cascading",
                       seed: int = 0) -> Any:
    """An adapter around :func:`randomize_model` of ``adapter.model`` (same labels, head type,
    preprocessing and device)."""
    from ..adapters.loading import adapter_from_module

    m = randomize_model(adapter.model, stage, mode=mode, seed=seed)
    return adapter_from_module(m, labels=list(adapter.labels), multi_label=adapter.multi_label,
                               preprocess=adapter.preprocess, device=adapter.device,
                               key=f"{adapter.key}#random-{mode}-{stage}-{seed}")


def spearman(a: np.ndarray, b: np.ndarray, *, absolute: bool = False) -> float:
    """Spearman rank correlation of two maps (flattened); NaN when either is constant."""
    from scipy.stats import spearmanr

    x = np.asarray(a, dtype=np.float64).ravel()
    y = np.asarray(b, dtype=np.float64).ravel()
    if absolute:
        x, y = np.abs(x), np.abs(y)
    if x.size < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(spearmanr(x, y).statistic)


def randomisation_check(adapter: Any, x: Tensor, explainers: Sequence[Any],
                        targets: Sequence[int], *, stages: Sequence[str] = ("all",),
                        mode: str = "cascading", seed: int = 0,
                        reference: dict[tuple[str, int], np.ndarray] | None = None,
                        ) -> dict[tuple[str, str, int], float]:
    """Spearman between each method's grid on the trained and on randomised models.

    Args:
        x: preprocessed batch ``(1, 3, H, W)`` (one image).
        targets: class indices explained (the same index on the randomised model).
        stages: randomisation stages (see :func:`randomize_model`).
        reference: precomputed trained-model grids ``{(method, target): (gh, gw)}``.

    Returns:
        ``{(stage, method, target): rho}``.
    """
    from ..engine import run_explainers

    tsets = [[int(t)] for t in targets]
    if reference is None:
        res = run_explainers(adapter, x, explainers, tsets)
        reference = {(e.name, int(t)): res.outputs[k][e.name].grid[0].numpy()
                     for k, t in enumerate(targets) for e in explainers}
    out: dict[tuple[str, str, int], float] = {}
    for stage in stages:
        rnd = randomized_adapter(adapter, stage, mode=mode, seed=seed)
        res = run_explainers(rnd, x, explainers, tsets)
        for k, t in enumerate(targets):
            for e in explainers:
                out[(stage, e.name, int(t))] = spearman(reference[(e.name, int(t))],
                                                        res.outputs[k][e.name].grid[0].numpy())
    return out


__all__ = [
    "PerturbationCurve",
    "baseline_image",
    "blur",
    "cascade_stages",
    "deletion_insertion",
    "parameter_groups",
    "patch_order",
    "randomisation_check",
    "randomize_model",
    "randomized_adapter",
    "spearman",
]
