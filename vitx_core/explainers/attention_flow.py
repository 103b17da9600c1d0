"""Attention flow (Abnar & Zuidema 2020): max-flow through the layered attention graph."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..capture import Capture, Needs
from ..registry import Explainer, register_explainer
from ._common import HeadFusion, Readout, add_identity_and_normalise, fuse_heads


def attention_flow(mats: np.ndarray, source_w: np.ndarray, scale: float = 1e6) -> np.ndarray:
    """Max-flow from the read-out to every input token.

    Args:
        mats: ``(L, N, N)`` residual-normalised attention ``Â^l`` (rows sum to 1), block order.
        source_w: ``(N,)`` read-out weights over the top layer's tokens (one-hot for CLS).
        scale: capacities are multiplied by this and rounded to int (scipy needs integers).

    Returns:
        ``(N,)`` flows into each input token, normalised to sum to 1 (prefix tokens included).
        Graph: nodes ``(l, i)`` for ``l = 0..L``; edge ``(l, i) -> (l-1, j)`` with capacity
        ``Â^l[i, j]``; a super-source feeds the top layer with ``source_w``.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import maximum_flow

    L, n, _ = mats.shape
    nodes = (L + 1) * n + 1
    src = nodes - 1
    rows, cols, caps = [], [], []
    for layer in range(1, L + 1):
        c = np.rint(mats[layer - 1] * scale).astype(np.int64)
        i, j = np.nonzero(c)
        rows.append(layer * n + i)
        cols.append((layer - 1) * n + j)
        caps.append(c[i, j])
    sw = np.rint(np.asarray(source_w, dtype=np.float64) * scale).astype(np.int64)
    i = np.nonzero(sw)[0]
    rows.append(np.full(len(i), src))
    cols.append(L * n + i)
    caps.append(sw[i])
    r, c, v = np.concatenate(rows), np.concatenate(cols), np.concatenate(caps)
    if v.max(initial=0) >= np.iinfo(np.int32).max:
        raise ValueError("attention_flow: capacity overflow; lower the scale")
    graph = coo_matrix((v.astype(np.int32), (r, c)), shape=(nodes, nodes)).tocsr()
    flows = np.array([maximum_flow(graph, src, t, method="dinic").flow_value for t in range(n)],
                     dtype=np.float64)
    total = flows.sum()
    return flows / total if total > 0 else flows


@register_explainer
class AttentionFlow(Explainer):
    """Attention flow, Abnar & Zuidema (2020): the max-flow view of rollout's graph.

    One max-flow problem per input token (scipy's Dinic solver on integer capacities), so it is
    run on request only ("slow"): about 3 s per image for ViT-B/16 at 224 on 2 CPU cores.
    """

    name = "attention_flow"
    title = "Attention flow"
    paper_url = "https://arxiv.org/abs/2005.00928"
    needs = Needs(attn=True)
    on_demand = True

    @dataclass(frozen=True)
    class Params:
        head_fusion: HeadFusion = "mean"
        readout: Readout = "auto"
        max_tokens: int = 1025

    def compute(self, cap: Capture, adapter, x: Tensor):
        p = self.params
        n = cap.num_tokens
        if n > p.max_tokens:
            raise ValueError(f"attention_flow: {n} tokens exceed max_tokens={p.max_tokens} "
                             "(the graph grows as L*N^2); raise it explicitly to run anyway")
        mats = torch.stack([add_identity_and_normalise(fuse_heads(a.float(), p.head_fusion))
                            for a in cap.attn], dim=1)  # (B, L, N, N)
        w = cap.readout_weights(p.readout).double().numpy()
        out = []
        for b in range(cap.batch):
            f = attention_flow(mats[b].double().cpu().numpy(), w)
            out.append(torch.from_numpy(f[cap.num_prefix:]).float())
        return cap.to_grid(torch.stack(out))
