"""Every explainer, imported explicitly so registration order (and the UI order) is fixed."""

from .attention_flow import AttentionFlow
from .chefer import CheferRelevance
from .gmar import GMAR
from .grad_cam import GradCAM
from .integrated_gradients import IntegratedGradientsExplainer
from .legrad import LeGrad
from .occlusion import Occlusion
from .raw_attention import RawAttention
from .rollout import AttentionRollout

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
