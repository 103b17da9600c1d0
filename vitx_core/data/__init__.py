"""Synthetic data for vitx: chest-radiograph phantoms with exact ground truth (numpy / scipy only)."""

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
    "FINDINGS",
    "GENERATOR_VERSION",
    "TRAIN_SEED_OFFSET",
    "Phantom",
    "case_key",
    "cohort_case",
    "decode_rle",
    "encode_rle",
    "generate_sample_cohort",
    "mask_boxes",
    "measure_ctr",
    "phantom_batch",
    "render_phantom",
    "sample_findings",
    "write_dicom",
    "write_png",
]
