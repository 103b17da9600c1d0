"""``load_model(spec)``: every way a user names a model -> one :class:`VitAdapter`. Offline only.

Specs:
    ``timm:<arch>``       timm architecture, random init unless ``weights`` (a ``.pth`` /
                          ``.safetensors`` state dict) is given; ``img_size`` for non-square inputs.
    ``hf:<dir>``          a local ``save_pretrained`` directory of ``ViTForImageClassification``
                          (``local_files_only=True``; labels from ``id2label``).
    ``<dir>``             a vitx model directory (``model.json`` + safetensors weights), or an HF
                          directory (``config.json``).
    ``demo``              the bundled demo model (``sample_data/models/demo``).
    an ``nn.Module``      a timm ``VisionTransformer`` or HF ViT already in memory.

Nothing here ever downloads: a missing file is a ``FileNotFoundError`` naming the path.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..geometry import PreprocessSpec
from .base import VitAdapter
from .hf_adapter import HFAdapter, is_hf_vit
from .timm_adapter import TimmAdapter, is_timm_vit

MODEL_CARD = "model.json"
MODEL_CARD_FORMAT = "vitx-model/1"
REPO_ROOT = Path(__file__).resolve().parents[2]


def demo_model_dir() -> Path:
    """The bundled demo model directory (``VITX_DEMO_MODEL`` overrides)."""
    return Path(os.environ.get("VITX_DEMO_MODEL", REPO_ROOT / "sample_data" / "models" / "demo"))


def load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a ``.safetensors`` or ``.pth``/``.pt``/``.bin`` state dict (never unpickles code)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"weights file not found: {p}")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(p))
    obj = torch.load(p, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model", "model_state_dict", "module"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{p} does not contain a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def _load_into(model: nn.Module, sd: dict[str, torch.Tensor], path: Any) -> None:
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"weights {path} do not match the architecture: missing keys {list(missing)[:8]}"
            f"{'...' if len(missing) > 8 else ''}, unexpected keys {list(unexpected)[:8]}"
            f"{'...' if len(unexpected) > 8 else ''}")


def _head_classes(sd: dict[str, torch.Tensor]) -> int | None:
    w = sd.get("head.weight")
    return int(w.shape[0]) if w is not None and w.ndim == 2 else None


def _timm_preprocess(model: nn.Module, override: PreprocessSpec | dict | None) -> PreprocessSpec:
    if isinstance(override, PreprocessSpec):
        return override
    cfg = getattr(model, "pretrained_cfg", None) or {}
    interp = cfg.get("interpolation", "bicubic")
    d = {
        "size": tuple(int(s) for s in model.patch_embed.img_size),
        "mean": tuple(cfg.get("mean", (0.5, 0.5, 0.5))),
        "std": tuple(cfg.get("std", (0.5, 0.5, 0.5))),
        "interpolation": interp if interp in ("bilinear", "bicubic", "nearest") else "bicubic",
        "crop_pct": float(cfg.get("crop_pct", 0.875) or 0.875),
    }
    d.update(override or {})
    return PreprocessSpec.from_dict(d)


def _as_hw(size: Any) -> tuple[int, int] | None:
    if size is None:
        return None
    if isinstance(size, int):
        return (size, size)
    return (int(size[0]), int(size[1]))


def _load_timm(arch: str, weights: str | os.PathLike | None, *, labels: Sequence[str] | None,
               multi_label: bool, img_size: Any, preprocess: Any, device: Any,
               model_kwargs: dict | None, key: str) -> VitAdapter:
    import timm

    if arch not in timm.list_models():
        close = timm.list_models(f"*{arch.split('_')[0]}*")[:10]
        raise ValueError(f"unknown timm architecture {arch!r}; similar: {close}")
    sd = load_state_dict_file(weights) if weights is not None else None
    kwargs: dict[str, Any] = dict(model_kwargs or {})
    n = len(labels) if labels is not None else (_head_classes(sd) if sd is not None else None)
    if n is not None:
        kwargs["num_classes"] = n
    if img_size is not None:
        kwargs["img_size"] = _as_hw(img_size)
    if "img_size" in kwargs:
        kwargs["img_size"] = _as_hw(kwargs["img_size"])
    model = timm.create_model(arch, pretrained=False, **kwargs)
    if sd is not None:
        _load_into(model, sd, weights)
    pre = _timm_preprocess(model, preprocess)
    return TimmAdapter(model, key=key, labels=labels, multi_label=multi_label, preprocess=pre,
                       device=device, meta={"weights": str(weights) if weights else None})


def _hf_preprocess(directory: Path | None, model: nn.Module, override: Any) -> PreprocessSpec:
    if isinstance(override, PreprocessSpec):
        return override
    size = _as_hw(model.config.image_size)
    d: dict[str, Any] = {"size": size, "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5),
                         "interpolation": "bilinear"}
    pp = directory / "preprocessor_config.json" if directory else None
    if pp is not None and pp.is_file():
        cfg = json.loads(pp.read_text())
        if "image_mean" in cfg:
            d["mean"] = tuple(cfg["image_mean"])
        if "image_std" in cfg:
            d["std"] = tuple(cfg["image_std"])
        s = cfg.get("size")
        if isinstance(s, dict) and "height" in s and "width" in s:
            d["size"] = (int(s["height"]), int(s["width"]))
        elif isinstance(s, int):
            d["size"] = (s, s)
        resample = cfg.get("resample")
        d["interpolation"] = {2: "bilinear", 3: "bicubic", 0: "nearest"}.get(resample, "bilinear")
    d.update(override or {})
    return PreprocessSpec.from_dict(d)


def _hf_labels(model: nn.Module) -> list[str]:
    id2label = getattr(model.config, "id2label", None) or {}
    n = int(model.config.num_labels)
    return [str(id2label.get(i, id2label.get(str(i), f"class_{i}"))) for i in range(n)]


def _load_hf_dir(directory: Path, *, labels: Sequence[str] | None, multi_label: bool | None,
                 preprocess: Any, device: Any, key: str) -> VitAdapter:
    from transformers import ViTForImageClassification

    if not (directory / "config.json").is_file():
        raise FileNotFoundError(f"no Hugging Face config.json in {directory}")
    has_weights = any((directory / f).is_file() for f in (
        "model.safetensors", "pytorch_model.bin", "model.safetensors.index.json",
        "pytorch_model.bin.index.json"))
    if not has_weights:
        raise FileNotFoundError(f"no model weights (model.safetensors / pytorch_model.bin) in "
                                f"{directory}")
    model = ViTForImageClassification.from_pretrained(str(directory), local_files_only=True)
    if multi_label is None:
        multi_label = getattr(model.config, "problem_type", None) == "multi_label_classification"
    pre = _hf_preprocess(directory, model, preprocess)
    return HFAdapter(model, key=key, labels=list(labels) if labels else _hf_labels(model),
                     multi_label=multi_label, preprocess=pre, device=device,
                     meta={"weights": str(directory)})


def read_model_card(directory: str | os.PathLike) -> dict:
    p = Path(directory) / MODEL_CARD
    if not p.is_file():
        raise FileNotFoundError(f"model card not found: {p}")
    try:
        card = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{p}: invalid JSON ({e})") from e
    for k in ("architecture", "class_names"):
        if k not in card:
            raise ValueError(f"{p}: missing required key {k!r}")
    return card


def _load_model_dir(directory: Path, *, device: Any, key: str) -> VitAdapter:
    card = read_model_card(directory)
    arch = str(card["architecture"])
    labels = list(card["class_names"])
    multi = bool(card.get("multi_label", False))
    pre = PreprocessSpec.from_dict(card["preprocess"]) if card.get("preprocess") else None
    if arch.startswith("hf:"):
        sub = directory / arch[3:]
        ad = _load_hf_dir(sub, labels=labels, multi_label=multi, preprocess=pre, device=device,
                          key=key)
    elif arch.startswith("timm:"):
        weights = directory / card.get("weights", "model.safetensors")
        if not weights.is_file():
            raise FileNotFoundError(f"weights file not found: {weights}")
        ad = _load_timm(arch[5:], weights, labels=labels, multi_label=multi, img_size=None,
                        preprocess=pre, device=device, model_kwargs=card.get("model_kwargs"),
                        key=key)
    else:
        raise ValueError(f"{directory / MODEL_CARD}: architecture must start with 'timm:' or "
                         f"'hf:', got {arch!r}")
    ad.meta["card"] = card
    return ad


def load_model(spec: str | os.PathLike | nn.Module | VitAdapter, weights: str | os.PathLike |
               None = None, *, labels: Sequence[str] | None = None, multi_label: bool | None =
               None, img_size: int | tuple[int, int] | None = None,
               preprocess: PreprocessSpec | dict | None = None,
               device: str | torch.device | None = None,
               model_kwargs: dict | None = None) -> VitAdapter:
    """Load a ViT classifier by spec (see module docstring) -> :class:`VitAdapter`.

    Args:
        spec: ``timm:<arch>``, ``hf:<dir>``, a model directory, ``demo`` or an ``nn.Module``.
        weights: state dict file for ``timm:`` specs (``.pth`` / ``.safetensors``).
        labels: class names (default: from the model card / ``id2label`` / ``class_i``).
        multi_label: sigmoid head (default: from the card / HF ``problem_type``; else False).
        img_size: model input ``(H, W)`` for timm architectures (non-square inputs).
        preprocess: a :class:`PreprocessSpec` or a dict of overrides (e.g. ``{"mode":
            "letterbox"}``).
        device: default CUDA when available, else CPU.
        model_kwargs: extra ``timm.create_model`` arguments (e.g. ``dynamic_img_size``).
    """
    if isinstance(spec, VitAdapter):
        return spec
    if isinstance(spec, nn.Module):
        return adapter_from_module(spec, labels=labels, multi_label=bool(multi_label),
                                   preprocess=preprocess, device=device)
    s = str(spec)
    if s == "demo":
        d = demo_model_dir()
        if not (d / MODEL_CARD).is_file():
            raise FileNotFoundError(
                f"demo model not found at {d}; create it with `python -m vitx_core train-demo`")
        return _load_model_dir(d, device=device, key="demo")
    if s.startswith("timm:"):
        return _load_timm(s[5:], weights, labels=labels, multi_label=bool(multi_label),
                          img_size=img_size, preprocess=preprocess, device=device,
                          model_kwargs=model_kwargs, key=s)
    if s.startswith("hf:"):
        d = Path(s[3:])
        if not d.is_dir():
            raise FileNotFoundError(f"Hugging Face model directory not found: {d}")
        return _load_hf_dir(d, labels=labels, multi_label=multi_label, preprocess=preprocess,
                            device=device, key=s)
    p = Path(s)
    if p.is_dir():
        if (p / MODEL_CARD).is_file():
            return _load_model_dir(p, device=device, key=str(p))
        if (p / "config.json").is_file():
            return _load_hf_dir(p, labels=labels, multi_label=multi_label,
                                preprocess=preprocess, device=device, key=f"hf:{p}")
        raise FileNotFoundError(f"{p} has neither {MODEL_CARD} nor config.json")
    if p.suffix in (".pth", ".pt", ".safetensors", ".bin"):
        raise ValueError(f"{s} is a weights file: pass it as weights= with a 'timm:<arch>' spec")
    raise ValueError(f"cannot interpret model spec {s!r}: use 'timm:<arch>', 'hf:<dir>', a model "
                     "directory or 'demo'")


def adapter_from_module(model: nn.Module, *, labels: Sequence[str] | None = None,
                        multi_label: bool = False, preprocess: PreprocessSpec | dict | None = None,
                        device: Any = None, key: str | None = None) -> VitAdapter:
    """Wrap an in-memory timm ``VisionTransformer`` or HF ViT (notebook use)."""
    if is_timm_vit(model):
        pre = _timm_preprocess(model, preprocess)
        return TimmAdapter(model, key=key or f"module:{type(model).__name__}", labels=labels,
                           multi_label=multi_label, preprocess=pre, device=device)
    if is_hf_vit(model):
        pre = _hf_preprocess(None, model, preprocess)
        if multi_label is False and getattr(model.config, "problem_type", None) == \
                "multi_label_classification":
            multi_label = True
        return HFAdapter(model, key=key or f"module:{type(model).__name__}",
                         labels=list(labels) if labels else _hf_labels(model),
                         multi_label=multi_label, preprocess=pre, device=device)
    if hasattr(model, "timm_model") and is_timm_vit(model.timm_model):
        # transformers' TimmWrapperForImageClassification: eager is not propagated; treat as timm
        return adapter_from_module(model.timm_model, labels=labels, multi_label=multi_label,
                                   preprocess=preprocess, device=device, key=key)
    raise TypeError(f"unsupported model type {type(model).__name__}: expected a timm "
                    "VisionTransformer or a Hugging Face ViTForImageClassification")


def timm_model_kwargs(model: nn.Module) -> dict[str, Any]:
    """Constructor arguments that make ``timm.create_model(arch, **kw)`` rebuild ``model``'s
    shapes (depth, width, heads, input size, pooling, ...), read off the instance."""
    blk = model.blocks[0]
    kw: dict[str, Any] = {
        "img_size": [int(s) for s in model.patch_embed.img_size],
        "depth": len(model.blocks),
        "embed_dim": int(model.embed_dim),
        "num_heads": int(blk.attn.num_heads),
        "num_classes": int(model.num_classes),
        "global_pool": str(model.global_pool),
        "class_token": model.cls_token is not None,
    }
    fc1 = getattr(getattr(blk, "mlp", None), "fc1", None)
    if isinstance(fc1, nn.Linear):
        kw["mlp_ratio"] = fc1.out_features / kw["embed_dim"]
    if getattr(model, "num_reg_tokens", 0):
        kw["reg_tokens"] = int(model.num_reg_tokens)
    if getattr(model, "dynamic_img_size", False):
        kw["dynamic_img_size"] = True
    return kw


def _check_recreates(arch: str, kwargs: dict, model: nn.Module) -> None:
    import timm

    twin = timm.create_model(arch, pretrained=False, **{
        k: (tuple(v) if k == "img_size" else v) for k, v in kwargs.items()})
    a = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    b = {k: tuple(v.shape) for k, v in twin.state_dict().items()}
    if a != b:
        diff = sorted(set(a.items()) ^ set(b.items()))[:6]
        raise ValueError(f"cannot describe this {arch} model with {kwargs}: parameter shapes "
                         f"differ ({diff}); pass model_kwargs= explicitly")


def save_model_dir(adapter: VitAdapter, directory: str | os.PathLike, *,
                   description: str = "", metrics: dict | None = None,
                   extra: dict | None = None, model_kwargs: dict | None = None) -> Path:
    """Write a vitx model directory (``model.json`` + ``model.safetensors``) for ``adapter``.

    The card records the architecture, the ``timm.create_model`` arguments (read off the model
    and checked to rebuild the same parameter shapes), class names, multi-label flag,
    preprocessing and the weights hash.
    """
    from safetensors.torch import save_model

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    card: dict[str, Any] = {
        "format": MODEL_CARD_FORMAT,
        "class_names": list(adapter.labels),
        "multi_label": adapter.multi_label,
        "preprocess": adapter.preprocess.to_dict(),
        "description": description,
    }
    if adapter.family == "timm":
        arch = adapter.model.pretrained_cfg.get("architecture") or adapter.key.removeprefix("timm:")
        kwargs = dict(model_kwargs) if model_kwargs is not None else timm_model_kwargs(adapter.model)
        _check_recreates(arch, kwargs, adapter.model)
        card["architecture"] = f"timm:{arch}"
        card["model_kwargs"] = kwargs
        card["weights"] = "model.safetensors"
        save_model(adapter.model, str(d / "model.safetensors"))
    else:
        adapter.model.save_pretrained(str(d / "hf"))
        card["architecture"] = "hf:hf"
    card["weights_sha"] = adapter.version
    if metrics:
        card["metrics"] = metrics
    card.update(extra or {})
    (d / MODEL_CARD).write_text(json.dumps(card, indent=2, sort_keys=True) + "\n")
    return d
