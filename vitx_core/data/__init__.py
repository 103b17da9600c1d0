"""vitx data layer: synthetic phantoms, cohorts (images + ground truth + labels), ``vitx.toml``.

Phantoms (numpy / scipy only) live in :mod:`.phantoms`; cohort indexing in :mod:`.cohort`;
ground-truth parsers in :mod:`.annotations`; external saliency maps in :mod:`.external_maps`;
configuration in :mod:`.config`; the ``sample-data`` / ``cohort`` commands in :mod:`.commands`.
"""

from .annotations import BoxAnnotation, GTSpec, MaskAnnotation, box_to_mask
from .cohort import (
    DEFAULT_MAX_PIXELS,
    Case,
    Cohort,
    CohortError,
    load_cohort,
    load_cohort_from_config,
    pseudonymous_id,
)
from .config import ConfigError, VitxConfig, load_config
from .external_maps import MapReadError, MapSpec, SaliencyMap
from .phantoms import (
    FINDINGS,
    GENERATOR_VERSION,
    TRAIN_SEED_OFFSET,
    Phantom,
    case_key,
    cohort_case,
    decode_rle,
    encode_rle,
    generate_sample_cohort,
    mask_boxes,
    measure_ctr,
    phantom_batch,
    render_phantom,
    sample_findings,
    write_dicom,
    write_png,
)

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "FINDINGS",
    "GENERATOR_VERSION",
    "TRAIN_SEED_OFFSET",
    "BoxAnnotation",
    "Case",
    "Cohort",
    "CohortError",
    "ConfigError",
    "GTSpec",
    "MapReadError",
    "MapSpec",
    "MaskAnnotation",
    "Phantom",
    "SaliencyMap",
    "VitxConfig",
    "box_to_mask",
    "case_key",
    "cohort_case",
    "decode_rle",
    "encode_rle",
    "generate_sample_cohort",
    "load_cohort",
    "load_cohort_from_config",
    "load_config",
    "mask_boxes",
    "measure_ctr",
    "phantom_batch",
    "pseudonymous_id",
    "render_phantom",
    "sample_findings",
    "write_dicom",
    "write_png",
]
