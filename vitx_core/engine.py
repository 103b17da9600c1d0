"""The one-pass engine: ONE forward and one backward for every capture explainer.

``run_explainers(adapter, x, explainers, target_sets)``:

1. Union of the selected explainers' needs; the adapter installs hooks / eager attention.
2. One forward (grad enabled even under a caller's ``no_grad`` / ``inference_mode``).
3. For each target set: ONE ``autograd.grad`` of ``sum_b y[b, c_b]`` (raw logits) w.r.t. every
   ``A^l`` and the Grad-CAM tokens ``F`` at once; LeGrad adds one cheap partial backward per
   selected block (``ds^l_c/dA^l`` only traverses block ``l`` and the head).
4. Hooks removed, flags restored (also on error); explainers run on detached tensors.
5. Model-kind explainers (occlusion, integrated gradients) then make their own passes.

Several targets per image share the forward; attention-only maps are computed once per target
set anyway (they do not depend on the target, so the result is identical).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .adapters.base import VitAdapter
from .capture import Capture, Needs, Recorder
from .explainers.legrad import LeGrad
from .registry import Explainer


@dataclass
class MethodOutput:
    """One explainer's result for a batch: raw grid ``(B, gh, gw)`` + extras (tensors)."""

    grid: Tensor
    extras: dict[str, Tensor] = field(default_factory=dict)


@dataclass
class PassResult:
    """Everything one call produced: logits and, per target set, the per-method outputs."""

    logits: Tensor                          # (B, C)
    grid: tuple[int, int]
    targets: list[Tensor]                   # per target set, (B,)
    outputs: list[dict[str, MethodOutput]]  # per target set, method name -> output


def _resolve_targets(t: Tensor | Sequence[int | None] | int | None, logits: Tensor) -> Tensor:
    b = logits.shape[0]
    top = logits.argmax(dim=-1)
    if t is None:
        return top
    if isinstance(t, int):
        return torch.full((b,), t, dtype=torch.long, device=logits.device)
    if isinstance(t, Tensor):
        t = t.to(logits.device).long().reshape(-1)
        if t.numel() != b:
            raise ValueError(f"{t.numel()} targets for a batch of {b}")
        return t
    vals = list(t)
    if len(vals) != b:
        raise ValueError(f"{len(vals)} targets for a batch of {b}")
    return torch.tensor([int(top[i]) if v is None else int(v) for i, v in enumerate(vals)],
                        dtype=torch.long, device=logits.device)


def _validate(name: str, grid: Tensor, shape: tuple[int, ...]) -> Tensor:
    if not isinstance(grid, Tensor):
        raise TypeError(f"explainer {name!r} returned {type(grid).__name__}, not a tensor")
    if tuple(grid.shape) != shape:
        raise RuntimeError(f"explainer {name!r} returned shape {tuple(grid.shape)}, "
                           f"expected {shape}")
    grid = grid.detach().float().cpu()
    if not torch.isfinite(grid).all():
        raise RuntimeError(f"explainer {name!r} produced non-finite values")
    if (grid < 0).any():
        raise RuntimeError(f"explainer {name!r} produced negative values "
                           f"(min {grid.min().item():.3g}); maps must be >= 0")
    return grid


def _check_capture(adapter: VitAdapter, rec: Recorder, needs: Needs, grid: tuple[int, int]
                   ) -> None:
    depth = adapter.depth
    if (needs.attn or needs.attn_grad or needs.legrad) and len(rec.attn) != depth:
        raise RuntimeError(
            f"captured {len(rec.attn)} attention maps for a {depth}-block model: attention is "
            "probably computed by a fused kernel that never materialises the probabilities")
    if (needs.block_out or needs.legrad) and len(rec.block_out) != depth:
        raise RuntimeError(f"captured {len(rec.block_out)} block outputs for {depth} blocks")
    if needs.feat and rec.feat is None:
        raise RuntimeError(f"Grad-CAM layer {adapter.grad_cam_layer} was not reached")
    if rec.attn:
        n = rec.attn[0].shape[-1]
        p = adapter.num_prefix_tokens
        if n - p != grid[0] * grid[1]:
            raise RuntimeError(f"{n} tokens - {p} prefix tokens != {grid[0]}x{grid[1]} patch "
                               "grid; check num_prefix_tokens and the input size")


def run_explainers(adapter: VitAdapter, x: Tensor, explainers: Sequence[Explainer],
                   target_sets: Sequence[Tensor | Sequence[int | None] | int | None] = (None,),
                   ) -> PassResult:
    """Run ``explainers`` on the preprocessed batch ``x (B, 3, H, W)``.

    Args:
        target_sets: one entry per target to explain; each is ``None`` (top prediction per
            image), a class index for all images, or one index (or None) per image.
    """
    names = [e.name for e in explainers]
    if len(set(names)) != len(names):
        raise ValueError(f"each explainer may appear once per run, got {names}")
    capture_ex = [e for e in explainers if e.kind == "capture"]
    needs = Needs()
    for e in capture_ex:
        needs = needs | e.needs_for()
    legrad_jobs: set[tuple[str, int]] = set()
    for e in capture_ex:
        if isinstance(e, LeGrad):
            legrad_jobs |= {(e.params.pool, i) for i in e.layer_indices(adapter.depth)}

    grid = adapter.grid_size(tuple(x.shape[-2:]))
    p = adapter.num_prefix_tokens
    caps: list[Capture] = []
    grad_ctx = torch.enable_grad() if needs.any_grad else torch.no_grad()
    with torch.inference_mode(False), grad_ctx:
        x = x.detach().clone().to(adapter.device)  # a caller's inference tensor cannot join autograd
        frozen = not any(prm.requires_grad for prm in adapter.model.parameters())
        if needs.any_grad and frozen:
            x.requires_grad_(True)  # otherwise there is no graph to differentiate
        with adapter.instrument(needs) as rec:
            logits = adapter._forward_recorded(x, rec)
            _check_capture(adapter, rec, needs, grid)
            attn_d = [a.detach() for a in rec.attn]
            for ts in target_sets:
                t = _resolve_targets(ts, logits.detach())
                cap = Capture(logits=logits.detach().float(), targets=t.detach(), num_prefix=p,
                              grid=grid, readout=adapter.readout, attn=attn_d)
                if needs.attn_grad or needs.feat:
                    y = logits.gather(1, t[:, None]).sum()
                    inputs = (list(rec.attn) if needs.attn_grad else []) + (
                        [rec.feat] if needs.feat else [])
                    grads = torch.autograd.grad(y, inputs, retain_graph=True, allow_unused=True)
                    grads = [torch.zeros_like(i) if g is None else g.detach()
                             for i, g in zip(inputs, grads)]
                    if needs.attn_grad:
                        cap.attn_grad = grads[: len(rec.attn)]
                    if needs.feat:
                        cap.feat, cap.feat_grad = rec.feat.detach(), grads[-1]
                for pool, i in sorted(legrad_jobs):
                    cap.layer_grad[(pool, i)] = adapter.legrad_attention_grad(rec, i, t, pool)
                caps.append(cap)
            del rec
        logits = logits.detach().float()

    b = x.shape[0]
    shape = (b, grid[0], grid[1])
    outputs: list[dict[str, MethodOutput]] = []
    x_plain = x.detach()
    with torch.inference_mode(False):
        for cap in caps:
            out: dict[str, MethodOutput] = {}
            for e in explainers:
                if e.kind == "model":
                    with adapter.lock:
                        res = e.compute(cap, adapter, x_plain)
                else:
                    res = e.compute(cap, adapter, x_plain)
                g, extras = (res if isinstance(res, tuple) else (res, {}))
                out[e.name] = MethodOutput(
                    _validate(e.name, g, shape),
                    {k: v.detach().float().cpu() for k, v in extras.items()})
            outputs.append(out)
    return PassResult(logits=logits.cpu(), grid=grid, targets=[c.targets.cpu() for c in caps],
                      outputs=outputs)
