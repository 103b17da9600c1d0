"""Attention rollout (Abnar & Zuidema 2020), the canonical residual-weighted product."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from ..capture import Capture, Needs
from ..registry import Explainer, register_explainer
from ._common import HeadFusion, Readout, add_identity_and_normalise, chain, fuse_heads, layer_range


def discard_lowest(a: Tensor, ratio: float, protect: tuple[int, int] | None) -> Tensor:
    """Zero the ``int(N*N*ratio)`` smallest entries of each ``(N, N)`` matrix in ``(B, N, N)``.

    The ``protect`` entry (the read-out row's self-attention) is never discarded, so exactly the
    requested count of *other* entries is removed (vit-explain drops it from the count instead).
    """
    b, n, _ = a.shape
    k = int(n * n * ratio)
    if k <= 0:
        return a
    flat = a.reshape(b, n * n).clone()
    keyed = flat.clone()
    if protect is not None:
        keyed[:, protect[0] * n + protect[1]] = float("inf")
    idx = keyed.topk(k, dim=-1, largest=False).indices
    flat.scatter_(1, idx, 0.0)
    return flat.reshape(b, n, n)


def attention_rollout(attns: list[Tensor], head_fusion: str = "mean", discard_ratio: float = 0.0,
                      protect: tuple[int, int] | None = (0, 0)) -> Tensor:
    """Rollout ``J = Â^L ... Â^1`` with ``Â = (Ā + I) / rowsum`` -> ``(B, N, N)``, rows sum to 1.

    Order per block: fuse heads -> discard -> ``+ I`` -> row-normalise (keepdim) -> left-multiply.
    """
    mats = []
    for a in attns:
        f = fuse_heads(a.float(), head_fusion)
        if discard_ratio > 0:
            f = discard_lowest(f, discard_ratio, protect)
        mats.append(add_identity_and_normalise(f))
    return chain(mats)


@register_explainer
class AttentionRollout(Explainer):
    """Attention rollout, Abnar & Zuidema, "Quantifying Attention Flow in Transformers" (2020).

    Default = the paper: head mean, no discarding, ``0.5·A + 0.5·I``, all blocks. Preset
    ``vit-explain`` (max fusion, discard 0.9) follows jacobgil/vit-explain but with its row
    normalisation bug (missing keepdim, issue #16) fixed.
    """

    name = "rollout"
    title = "Attention rollout"
    paper_url = "https://arxiv.org/abs/2005.00928"
    needs = Needs(attn=True)
    presets = {"vit-explain": {"head_fusion": "max", "discard_ratio": 0.9}}

    @dataclass(frozen=True)
    class Params:
        head_fusion: HeadFusion = "mean"
        discard_ratio: float = 0.0
        start_layer: int = 0
        end_layer: int | None = None
        readout: Readout = "auto"

    def validate(self) -> None:
        if not 0.0 <= self.params.discard_ratio < 1.0:
            raise ValueError(f"rollout: discard_ratio must be in [0, 1), got "
                             f"{self.params.discard_ratio}")

    def compute(self, cap: Capture, adapter, x: Tensor):
        p = self.params
        layers = layer_range(len(cap.attn), p.start_layer, p.end_layer)
        mode = cap.readout if p.readout == "auto" else p.readout
        protect = {"cls": (0, 0), "dist": (1, 1)}.get(mode)
        j = attention_rollout([cap.attn[i] for i in layers], p.head_fusion, p.discard_ratio,
                              protect)
        grid = cap.read_rows(j, p.readout)
        return grid, {"patch_mass": grid.flatten(1).sum(dim=-1)}


