"""The adapter: everything family-specific about a ViT classifier lives behind this class.

Explainers and the engine only use this interface: prefix-token count, patch grid, read-out row,
preprocessing, ``instrument()`` (hooks + eager attention, always undone), ``layer_score()``
(LeGrad) and ``logits()``. Model families subclass it (timm, Hugging Face).
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
from collections.abc import Iterator, Sequence
from functools import cached_property
from typing import Literal

import torch
from torch import Tensor, nn

from ..capture import Needs, Recorder
from ..geometry import PreprocessSpec


def auto_device(device: str | torch.device | None = None) -> torch.device:
    """``device`` if given, else CUDA when available, else CPU."""
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def state_dict_hash(model: nn.Module) -> str:
    """sha256 over (name, dtype, shape, bytes) of every parameter and buffer, 16 hex chars."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


class VitAdapter:
    """Uniform view of a ViT classifier for vitx. Subclasses implement the ``_``-hooks.

    Attributes:
        key: model key (spec string) stored with every result.
        family: ``timm`` or ``hf``.
        model: the wrapped module, always in ``eval()`` mode.
        labels: class names (``class_0``... when unknown).
        multi_label: sigmoid head (True) or softmax (False).
        preprocess: input size, mean/std, resize mode.
        num_prefix_tokens: P (CLS + distillation + registers).
        readout: ``cls`` or ``patch_mean`` (pooled heads without a class token read-out).
        patch_size: ``(ph, pw)``; depth; num_heads.
        lock: serialises hook/gradient runs on the shared model (dashboard threads).
    """

    family: Literal["timm", "hf"]

    def __init__(self, model: nn.Module, *, key: str, labels: Sequence[str] | None,
                 multi_label: bool, preprocess: PreprocessSpec,
                 device: str | torch.device | None = None, meta: dict | None = None) -> None:
        self.model = model
        self.key = key
        self.device = auto_device(device)
        self.model.to(self.device).eval()
        n = self.num_classes
        labels = list(labels) if labels is not None else [f"class_{i}" for i in range(n)]
        if len(labels) != n:
            raise ValueError(f"{len(labels)} class names given but the model has {n} outputs")
        if len(set(labels)) != len(labels):
            raise ValueError(f"class names must be unique, got {labels}")
        self.labels = labels
        self.multi_label = bool(multi_label)
        self.preprocess = preprocess
        self.meta = dict(meta or {})
        self.lock = threading.RLock()

    # ---- to be provided by families ----------------------------------------------------
    @property
    def num_classes(self) -> int:
        raise NotImplementedError

    @property
    def num_prefix_tokens(self) -> int:
        raise NotImplementedError

    @property
    def readout(self) -> Literal["cls", "patch_mean"]:
        raise NotImplementedError

    @property
    def patch_size(self) -> tuple[int, int]:
        raise NotImplementedError

    @property
    def depth(self) -> int:
        raise NotImplementedError

    @property
    def num_heads(self) -> int:
        raise NotImplementedError

    def grid_size(self, input_hw: tuple[int, int]) -> tuple[int, int]:
        raise NotImplementedError

    def _forward(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def _instrument(self, needs: Needs, rec: Recorder) -> contextlib.AbstractContextManager:
        raise NotImplementedError

    def _forward_recorded(self, x: Tensor, rec: Recorder) -> Tensor:
        return self._forward(x)

    def layer_score(self, tokens: Tensor, pool: str = "model") -> Tensor:
        """The classifier head applied to one block's tokens ``(B, N, C)`` -> ``(B, classes)``."""
        raise NotImplementedError

    def legrad_attention_grad(self, rec: Recorder, layer: int, targets: Tensor, pool: str
                              ) -> Tensor:
        """``d s^l_c / d A^l`` for LeGrad: the head applied to block ``layer``'s tokens,
        differentiated w.r.t. that block's attention only (a partial backward on the kept
        graph; autograd prunes everything not between ``A^l`` and ``s^l``)."""
        s = self.layer_score(rec.block_out[layer], pool).float()
        g = torch.autograd.grad(s.gather(1, targets[:, None]).sum(), rec.attn[layer],
                                retain_graph=True, allow_unused=True)[0]
        return torch.zeros_like(rec.attn[layer]) if g is None else g.detach()

    # ---- shared -------------------------------------------------------------------------
    @cached_property
    def version(self) -> str:
        """Content hash of the weights; part of every cache key."""
        return state_dict_hash(self.model)

    @property
    def grad_cam_layer(self) -> str:
        """Name of the module whose output Grad-CAM uses (for display and parity)."""
        raise NotImplementedError

    def probabilities(self, logits: Tensor) -> Tensor:
        """Sigmoid for multi-label heads, softmax otherwise."""
        return torch.sigmoid(logits) if self.multi_label else torch.softmax(logits, dim=-1)

    @torch.no_grad()
    def logits(self, x: Tensor) -> Tensor:
        """Plain prediction ``(B, 3, H, W)`` -> ``(B, classes)`` (no hooks, no graph)."""
        with self.lock:
            return self._forward(x.to(self.device)).float()

    def forward_with_grad(self, x: Tensor) -> Tensor:
        """Forward that keeps the autograd graph (captum and other model-kind explainers)."""
        return self._forward(x).float()

    def class_index(self, target: int | str | None, logits: Tensor | None = None) -> int | None:
        """A class name or index -> index (None stays None = top prediction)."""
        if target is None:
            return None
        if isinstance(target, str):
            if target in self.labels:
                return self.labels.index(target)
            if target.lstrip("-").isdigit():
                target = int(target)
            else:
                raise KeyError(f"unknown class {target!r}; known classes: {self.labels}")
        t = int(target)
        if not -self.num_classes <= t < self.num_classes:
            raise IndexError(f"class index {t} out of range for {self.num_classes} classes")
        return t % self.num_classes

    @contextlib.contextmanager
    def instrument(self, needs: Needs) -> Iterator[Recorder]:
        """Install capture hooks for ``needs``; everything is undone on exit, also on error."""
        if self.model.training:
            raise RuntimeError("explainers need model.eval(): dropout would corrupt attention")
        rec = Recorder()
        with self.lock, self._instrument(needs, rec):
            yield rec

    def input_size(self) -> tuple[int, int]:
        return self.preprocess.size

    def describe(self) -> dict:
        """Small JSON-able summary (model card / provenance)."""
        return {
            "key": self.key,
            "family": self.family,
            "version": self.version,
            "labels": list(self.labels),
            "multi_label": self.multi_label,
            "num_prefix_tokens": self.num_prefix_tokens,
            "readout": self.readout,
            "patch_size": list(self.patch_size),
            "grid": list(self.grid_size(self.preprocess.size)),
            "depth": self.depth,
            "num_heads": self.num_heads,
            "preprocess": self.preprocess.to_dict(),
        }

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(key={self.key!r}, classes={len(self.labels)}, "
                f"input={self.preprocess.size}, patch={self.patch_size}, P={self.num_prefix_tokens})")


def _is_library_hook(fn) -> bool:
    """transformers installs its own permanent output-capturing hooks on first use of
    ``output_attentions`` (``transformers.utils.output_capturing``); they are not ours."""
    return getattr(fn, "__module__", "").startswith("transformers.")


def count_hooks(model: nn.Module, *, include_library: bool = False) -> int:
    """Number of forward/backward/pre hooks on every submodule (tests assert vitx leaves 0).

    Hooks that transformers installs permanently for its own output capture are ignored unless
    ``include_library``.
    """
    n = 0
    for m in model.modules():
        for attr in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks",
                     "_backward_pre_hooks"):
            d = getattr(m, attr, None) or {}
            n += sum(1 for fn in d.values() if include_library or not _is_library_hook(fn))
    return n
