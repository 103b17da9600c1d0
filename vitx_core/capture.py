"""What explainers need from a model pass, and what a pass captured.

The adapter's ``instrument(needs)`` context manager installs the family-specific hooks (and
switches attention to the eager path), the engine runs ONE forward and one backward for the union
of needs, and hands each explainer a :class:`Capture` of detached tensors. Explainers never touch
the model or its modules.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor


@dataclass(frozen=True)
class Needs:
    """Union of what the selected explainers read.

    Attributes:
        attn: post-softmax attention ``A^l`` of every block, ``(B, H, N, N)``.
        attn_grad: ``dy_c / dA^l`` for every block (one shared backward).
        feat: Grad-CAM tokens ``F`` (last block's pre-attention norm) ``(B, N, C)`` and ``dy_c/dF``.
        block_out: every block's output tokens ``z^l`` (for LeGrad's per-layer scores).
        legrad: per-layer partial backwards ``ds^l_c / dA^l`` (LeGrad).
    """

    attn: bool = False
    attn_grad: bool = False
    feat: bool = False
    block_out: bool = False
    legrad: bool = False

    def __or__(self, other: Needs) -> Needs:
        return Needs(*(a or b for a, b in zip(self.astuple(), other.astuple())))

    def astuple(self) -> tuple[bool, ...]:
        return (self.attn, self.attn_grad, self.feat, self.block_out, self.legrad)

    @property
    def any_grad(self) -> bool:
        return self.attn_grad or self.feat or self.legrad

    @property
    def any(self) -> bool:
        return any(self.astuple())


@dataclass
class Recorder:
    """Filled by the adapter's hooks during the single forward pass (tensors keep their graph)."""

    attn: list[Tensor] = field(default_factory=list)
    block_out: list[Tensor] = field(default_factory=list)
    feat: Tensor | None = None
    block_in: list[Tensor] = field(default_factory=list)  # adapter-specific fast paths (LeGrad)
    qkv: list[Tensor] = field(default_factory=list)


@dataclass
class Capture:
    """Detached results of one pass for one target per image; input of every capture explainer.

    Attributes:
        logits: ``(B, C)`` raw logits.
        targets: ``(B,)`` class indices explained (the raw logit ``y_c`` was differentiated).
        attn: L tensors ``(B, H, N, N)`` (post-softmax probabilities), block order.
        attn_grad: L tensors ``dy_c/dA^l`` or None.
        feat, feat_grad: ``(B, N, C)`` Grad-CAM tokens and their gradient, or None.
        layer_grad: ``{l: ds^l_c/dA^l}`` for LeGrad's layers, keyed by non-negative block index.
        num_prefix: P, prefix tokens (CLS, distillation, registers) before the patch tokens.
        grid: ``(gh, gw)`` patch grid of the input (from the patch embedding, never sqrt(N)).
        readout: ``cls`` or ``patch_mean``: which query row(s) the classifier reads.
    """

    logits: Tensor
    targets: Tensor
    num_prefix: int
    grid: tuple[int, int]
    readout: str
    attn: list[Tensor] = field(default_factory=list)
    attn_grad: list[Tensor] | None = None
    feat: Tensor | None = None
    feat_grad: Tensor | None = None
    layer_grad: dict[int, Tensor] = field(default_factory=dict)

    @property
    def batch(self) -> int:
        return int(self.logits.shape[0])

    @property
    def num_tokens(self) -> int:
        return self.num_prefix + self.grid[0] * self.grid[1]

    def readout_weights(self, readout: str = "auto") -> Tensor:
        """``(N,)`` weights over query rows: which row(s) of a token matrix give the map.

        ``auto`` follows the classifier (CLS row, or the mean of patch rows for pooled heads);
        ``cls`` row 0; ``dist`` row 1 (DeiT distillation token); ``patch_mean`` the mean of
        the patch rows (labelled as such in the UI).
        """
        n, p = self.num_tokens, self.num_prefix
        mode = self.readout if readout == "auto" else readout
        w = torch.zeros(n, dtype=torch.float32)
        if mode == "cls":
            if p < 1:
                raise ValueError("readout 'cls' needs a class token; this model has none")
            w[0] = 1.0
        elif mode == "dist":
            if p < 2:
                raise ValueError("readout 'dist' needs a distillation token (prefix tokens >= 2)")
            w[1] = 1.0
        elif mode == "patch_mean":
            w[p:] = 1.0 / (n - p)
        else:
            raise ValueError(f"unknown readout {readout!r}; use auto, cls, dist or patch_mean")
        return w

    def read_rows(self, m: Tensor, readout: str = "auto") -> Tensor:
        """``(B, N, N)`` token matrix -> ``(B, gh, gw)`` map of its read-out row, patch columns."""
        w = self.readout_weights(readout).to(m.dtype).to(m.device)
        row = torch.einsum("n,bnm->bm", w, m)
        return self.to_grid(row[:, self.num_prefix:])

    def to_grid(self, v: Tensor) -> Tensor:
        """``(B, gh*gw)`` -> ``(B, gh, gw)``, row-major like the patch embedding's flatten."""
        gh, gw = self.grid
        if v.shape[-1] != gh * gw:
            raise ValueError(f"{v.shape[-1]} patch values do not fill a {gh}x{gw} grid")
        return v.reshape(*v.shape[:-1], gh, gw)
