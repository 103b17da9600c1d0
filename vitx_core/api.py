"""``explain()``: image(s) in, every selected explainer's map on the original pixels out."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from . import explainers as _explainers  # noqa: F401  (registers every explainer)
from .adapters.base import VitAdapter
from .adapters.loading import load_model
from .engine import run_explainers
from .geometry import preprocess
from .imageio import LoadedImage, load_image
from .registry import Explainer, default_methods, get_explainer_class, list_explainers
from .results import ExplainResult, Explanation, Prediction, normalise

MethodsArg = None | str | Sequence[str] | Mapping[str, Mapping[str, Any] | None]
TargetArg = None | int | str


def build_explainers(methods: MethodsArg) -> list[Explainer]:
    """``None`` -> the one-pass default set; ``"all"`` -> every registered explainer; a list of
    keys; or ``{key: options}`` where options may include ``preset``."""
    if methods is None:
        return [get_explainer_class(n)() for n in default_methods()]
    if isinstance(methods, str):
        if methods == "all":
            return [get_explainer_class(i.name)() for i in list_explainers()]
        if methods == "default":
            return build_explainers(None)
        methods = [m.strip() for m in methods.split(",") if m.strip()]
    if isinstance(methods, Mapping):
        out = []
        for name, opts in methods.items():
            opts = dict(opts or {})
            cls = get_explainer_class(name)
            preset = opts.pop("preset", None)
            out.append(cls.from_preset(preset, **opts) if preset else cls(**opts))
        return out
    if isinstance(methods, Explainer):
        return [methods]
    out = []
    for m in methods:
        out.append(m if isinstance(m, Explainer) else get_explainer_class(str(m))())
    if not out:
        raise ValueError("no explainer selected")
    return out


def _stats(grid: np.ndarray, extras: dict[str, np.ndarray], b: int) -> dict[str, float]:
    s = {"min": float(grid.min()), "max": float(grid.max()), "sum": float(grid.sum())}
    if "patch_mass" in extras:
        s["patch_mass"] = float(np.asarray(extras["patch_mass"])[b])
    return s


def explain_images(adapter: VitAdapter, images: Sequence[Any], explainers: Sequence[Explainer],
                   targets: Sequence[TargetArg] = (None,), *, names: Sequence[str] | None = None,
                   ) -> list[list[ExplainResult]]:
    """Batch form: ``images`` share one pass. Returns ``results[image][target_index]``."""
    loaded: list[LoadedImage] = [load_image(im, name=(names[i] if names else None))
                                 for i, im in enumerate(images)]
    xs, geoms = [], []
    for li in loaded:
        x, g = preprocess(li.pixels, adapter.preprocess)
        xs.append(x)
        geoms.append(g)
    x = torch.stack(xs)
    tsets = [adapter.class_index(t) for t in targets]
    res = run_explainers(adapter, x, explainers, tsets)
    probs = adapter.probabilities(res.logits).numpy()
    logits = res.logits.numpy()
    ph, pw = adapter.patch_size
    out: list[list[ExplainResult]] = []
    for b, li in enumerate(loaded):
        pred = Prediction(list(adapter.labels), logits[b], probs[b], adapter.multi_label)
        per_target = []
        for k, tvec in enumerate(res.targets):
            t = int(tvec[b])
            exps: dict[str, Explanation] = {}
            for e in explainers:
                mo = res.outputs[k][e.name]
                grid = mo.grid[b].numpy().astype(np.float32)
                extras = {n: v[b].numpy() for n, v in mo.extras.items()
                          if v.ndim > 0 and v.shape[0] == x.shape[0]}
                flags = {"constant_map": normalise(grid)[1],
                         "partial_view": not geoms[b].covers_whole_image,
                         "readout": adapter.readout}
                exps[e.name] = Explanation(
                    method=e.name, params=e.params_dict, grid=grid, target=t,
                    target_label=adapter.labels[t], logit=float(logits[b, t]),
                    prob=float(probs[b, t]), geometry=geoms[b], patch_size=(ph, pw),
                    model_key=adapter.key, model_version=adapter.version,
                    stats=_stats(grid, mo.extras, b), flags=flags,
                    extras={n: v for n, v in extras.items() if n != "patch_mass"})
            per_target.append(ExplainResult(
                image_name=li.name, image_hw=li.hw, prediction=pred, target=t,
                target_label=adapter.labels[t], explanations=exps, geometry=geoms[b],
                model_key=adapter.key, model_version=adapter.version, meta=dict(li.meta)))
        out.append(per_target)
    return out


def explain(model: Any, image: Any, methods: MethodsArg = None,
            target: TargetArg | Sequence[TargetArg] = None, *, device: str | None = None,
            ) -> ExplainResult | list[ExplainResult] | list[list[ExplainResult]]:
    """Explain ``image`` with every selected explainer in one shared pass.

    Args:
        model: a :class:`VitAdapter`, a spec for :func:`load_model` (``timm:<arch>``,
            ``hf:<dir>``, a model directory, ``demo``) or an in-memory ``nn.Module``.
        image: a path (PNG, JPEG, DICOM), a PIL image, an array, or a list of these (one
            batched pass).
        methods: ``None`` (one-pass set), ``"all"``, a list of keys, or ``{key: options}``.
        target: a class index, a class name, ``None`` (top prediction), or a list of these
            (one forward, one backward per target).

    Returns:
        One :class:`ExplainResult` for one image and one target; a list over targets when
        ``target`` is a list; a list over images when ``image`` is a list (of lists when both).
    """
    adapter = model if isinstance(model, VitAdapter) else load_model(model, device=device)
    many_images = isinstance(image, (list, tuple))
    many_targets = isinstance(target, (list, tuple))
    images = list(image) if many_images else [image]
    targets = list(target) if many_targets else [target]
    res = explain_images(adapter, images, build_explainers(methods), targets)
    res = [r if many_targets else r[0] for r in res]
    return res if many_images else res[0]


def iter_explain(adapter: VitAdapter, images: Iterable[Any], methods: MethodsArg = None,
                 target: TargetArg = None, batch_size: int = 1):
    """Yield ``(image, ExplainResult | Exception)`` one by one (bad files do not stop the run)."""
    ex = build_explainers(methods)
    batch: list[Any] = []

    def flush():
        try:
            rs = explain_images(adapter, batch, ex, [target])
            return [(im, r[0]) for im, r in zip(batch, rs)]
        except Exception as err:  # one bad image: retry one by one to isolate it
            if len(batch) == 1:
                return [(batch[0], err)]
            out = []
            for im in batch:
                try:
                    out.append((im, explain_images(adapter, [im], ex, [target])[0][0]))
                except Exception as e:
                    out.append((im, e))
            return out

    for im in images:
        batch.append(im)
        if len(batch) >= batch_size:
            yield from flush()
            batch = []
    if batch:
        yield from flush()
