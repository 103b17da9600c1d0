"""Every explainer, imported explicitly: import order = registration order = UI order."""
# ruff: noqa: I001  (the order below is deliberate)

from .raw_attention import RawAttention
from .rollout import AttentionRollout
from .attention_flow import AttentionFlow
from .gmar import GMAR
from .legrad import LeGrad
from .grad_cam import GradCAM
from .chefer import CheferRelevance
from .occlusion import Occlusion
from .integrated_gradients import IntegratedGradientsExplainer

__all__ = [
    "GMAR",
    "AttentionFlow",
    "AttentionRollout",
    "CheferRelevance",
    "GradCAM",
    "IntegratedGradientsExplainer",
    "LeGrad",
    "Occlusion",
    "RawAttention",
]
