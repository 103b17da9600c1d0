"""Training for vitx: fine-tune a ViT on labelled chest images and write a vitx model directory.

Public API::

    from vitx_core.training import train, TrainConfig
    out = train("data/", "timm:vit_tiny_patch16_224", "models/mine", img_size=(224, 192),
                config=TrainConfig(epochs=20, balance=True))
    out.metrics["per_class"]["nodule"]["auroc"]

Lower level: :func:`discover` (find / split data), :func:`build_model`, :func:`fit` (the loop),
:func:`evaluate` (report files), :func:`train_demo` (the bundled demo model on phantoms).
CLI: ``python -m vitx_core train`` / ``train-demo`` (:mod:`vitx_core.training.commands`).

Importing this package is light (no torch work); the heavy modules import on first use.
"""

from .augment import AugmentConfig, augment_batch
from .data import (
    DataError,
    DataSplits,
    ImageDataset,
    Sample,
    TensorImageDataset,
    balanced_weights,
    discover,
    normalise_batch,
    split_by_patient,
)
from .demo import DemoConfig, pointing_game, train_demo
from .fit import FitResult, TrainConfig, fit, predict
from .metrics import macro_auroc, reliability
from .pipeline import TrainOutcome, build_model, evaluate, train
from .report import compute_report, write_report

__all__ = [
    "AugmentConfig",
    "DataError",
    "DataSplits",
    "DemoConfig",
    "FitResult",
    "ImageDataset",
    "Sample",
    "TensorImageDataset",
    "TrainConfig",
    "TrainOutcome",
    "augment_batch",
    "balanced_weights",
    "build_model",
    "compute_report",
    "discover",
    "evaluate",
    "fit",
    "macro_auroc",
    "normalise_batch",
    "pointing_game",
    "predict",
    "reliability",
    "split_by_patient",
    "train",
    "train_demo",
    "write_report",
]
