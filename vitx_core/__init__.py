"""vitx_core: ViT adapters, every explainer in one pass, geometry back to the original pixels.

Public API::

    from vitx_core import load_model, explain
    model = load_model("timm:vit_base_patch16_224", weights="vit.safetensors")
    res = explain(model, "case.dcm", methods=["rollout", "gradcam"], target="Nodule")
    res["rollout"].heatmap      # (H0, W0) float32 in [0, 1] on the DICOM's own pixel grid

vitx never reaches a model hub: importing this package sets ``HF_HUB_OFFLINE=1`` (unless the
caller set it) before timm / transformers are imported.
"""

import os as _os

for _k, _v in (("HF_HUB_OFFLINE", "1"), ("TRANSFORMERS_OFFLINE", "1"),
               ("HF_HUB_DISABLE_TELEMETRY", "1")):
    _os.environ.setdefault(_k, _v)

from ._warnings import VitxWarning  # noqa: E402
from .adapters import (  # noqa: E402
    HFAdapter,
    TimmAdapter,
    VitAdapter,
    adapter_from_module,
    count_hooks,
    load_model,
    save_model_dir,
)
from .api import build_explainers, explain, explain_images, iter_explain  # noqa: E402
from .capture import Capture, Needs  # noqa: E402
from .engine import run_explainers  # noqa: E402
from .geometry import Geometry, PreprocessSpec, preprocess  # noqa: E402
from .imageio import ImageReadError, LoadedImage, load_image  # noqa: E402
from .registry import (  # noqa: E402
    Explainer,
    default_methods,
    get_explainer,
    list_explainers,
    register_explainer,
)
from .results import ExplainResult, Explanation, Prediction, normalise  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "Capture",
    "ExplainResult",
    "Explainer",
    "Explanation",
    "Geometry",
    "HFAdapter",
    "ImageReadError",
    "LoadedImage",
    "Needs",
    "Prediction",
    "PreprocessSpec",
    "TimmAdapter",
    "VitAdapter",
    "VitxWarning",
    "__version__",
    "adapter_from_module",
    "build_explainers",
    "count_hooks",
    "default_methods",
    "explain",
    "explain_images",
    "get_explainer",
    "iter_explain",
    "list_explainers",
    "load_image",
    "load_model",
    "normalise",
    "preprocess",
    "register_explainer",
    "run_explainers",
    "save_model_dir",
]
