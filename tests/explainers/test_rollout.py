import numpy as np
import pytest
import torch

from tests.explainers._cap import make_capture, random_attention
from vitx_core.explainers.rollout import AttentionRollout, attention_rollout, discard_lowest


def test_rows_sum_to_one_and_nonnegative():
    attn = [random_attention(2, 3, 5, seed=s) for s in range(4)]
    j = attention_rollout(attn)
    assert torch.allclose(j.sum(-1), torch.ones(2, 5), atol=1e-6)
    assert (j >= 0).all()
    for fusion in ("max", "min"):
        j = attention_rollout(attn, fusion, discard_ratio=0.5)
        assert torch.allclose(j.sum(-1), torch.ones(2, 5), atol=1e-6)


def test_identity_attention_gives_identity():
    eye = torch.eye(5).expand(1, 2, 5, 5)
    j = attention_rollout([eye, eye, eye])
    assert torch.allclose(j, torch.eye(5)[None])


def test_hand_computed_two_blocks():
    # N = 3 tokens, one head. A1, A2 row-stochastic.
    a1 = torch.tensor([[0.5, 0.25, 0.25], [0.0, 1.0, 0.0], [0.2, 0.3, 0.5]])
    a2 = torch.tensor([[0.0, 0.5, 0.5], [0.5, 0.5, 0.0], [0.0, 0.0, 1.0]])
    h1 = 0.5 * a1 + 0.5 * torch.eye(3)
    h2 = 0.5 * a2 + 0.5 * torch.eye(3)
    expected = h2 @ h1  # left-multiplied: the later block on the left
    j = attention_rollout([a1[None, None], a2[None, None]])
    assert torch.allclose(j[0], expected, atol=1e-7)
    # a wrong order would differ on this example
    assert not torch.allclose(j[0], h1 @ h2, atol=1e-3)
    # map = read-out row 0, patch columns 1: on a 1x2 grid
    cap = make_capture([a1[None, None], a2[None, None]], grid=(1, 2))
    grid = AttentionRollout().compute(cap, None, None)[0]
    np.testing.assert_allclose(grid[0].numpy(), expected[0, 1:].reshape(1, 2).numpy(), atol=1e-7)
    # by hand: h1 rows [.75,.125,.125], [0,1,0], [.1,.15,.75]; h2[0] = [.5,.25,.25]
    # (h2 @ h1)[0] = .5*h1[0] + .25*h1[1] + .25*h1[2] = [.4, .35, .25]
    np.testing.assert_allclose(grid[0].numpy().ravel(), [0.35, 0.25], atol=1e-7)


def test_discard_removes_exactly_k_and_protects_readout_self():
    a = torch.arange(16, dtype=torch.float32).reshape(1, 4, 4) + 1
    a[0, 0, 0] = 0.5  # smallest entry, but it is the CLS->CLS entry
    d = discard_lowest(a, 0.25, protect=(0, 0))  # k = 4
    assert d[0, 0, 0] == 0.5
    assert int((d == 0).sum()) == 4
    assert torch.equal(d[0].flatten()[[1, 2, 3, 4]], torch.zeros(4))


def test_start_and_end_layer():
    attn = [random_attention(1, 2, 5, seed=s) for s in range(3)]
    cap = make_capture(attn)
    only_last = AttentionRollout(start_layer=2).compute(cap, None, None)[0]
    direct = attention_rollout(attn[2:])[:, 0, 1:].reshape(1, 2, 2)
    assert torch.allclose(only_last, direct)
    with pytest.raises(ValueError, match="empty"):
        AttentionRollout(start_layer=3).compute(cap, None, None)


def test_patch_mean_readout_for_pooled_models():
    attn = [random_attention(1, 2, 5, seed=s) for s in range(2)]
    cap = make_capture(attn, readout="patch_mean")
    g = AttentionRollout().compute(cap, None, None)[0]
    j = attention_rollout(attn)
    assert torch.allclose(g.flatten(), j[0, 1:, 1:].mean(0), atol=1e-7)
