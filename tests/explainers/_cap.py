"""Hand-built captures for oracle tests (no model involved)."""

import torch

from vitx_core.capture import Capture


def random_attention(b: int, h: int, n: int, seed: int = 0, sharpness: float = 3.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(sharpness * torch.randn(b, h, n, n, generator=g), dim=-1)


def make_capture(attn, grads=None, *, num_prefix=1, grid=(2, 2), readout="cls", targets=None,
                 feat=None, feat_grad=None, layer_grad=None) -> Capture:
    b = attn[0].shape[0] if attn else feat.shape[0]
    return Capture(logits=torch.zeros(b, 3), targets=targets if targets is not None else
                   torch.zeros(b, dtype=torch.long), num_prefix=num_prefix, grid=grid,
                   readout=readout, attn=list(attn), attn_grad=grads, feat=feat,
                   feat_grad=feat_grad, layer_grad=layer_grad or {})
