"""Built-in synthetic shapes dataset (``rs_synthetic_train`` / ``rs_synthetic_val``).

Importing this package registers both datasets with the default sizes of
``cfg.DATASETS.RS_SYNTHETIC`` (1000 / 200 images of 256 px, seed 0) without generating
anything; call :func:`register_rs_synthetic_from_cfg` to apply a config's sizes.
"""
from .builtin import (
    RS_SYNTHETIC_SPLITS,
    prepare_rs_synthetic,
    register_rs_synthetic,
    register_rs_synthetic_from_cfg,
)
from .synthetic_shapes import (
    GENERATOR_VERSION,
    SYNTHETIC_CLASSES,
    generate_synthetic_image,
    generate_synthetic_split,
)

__all__ = [
    "GENERATOR_VERSION",
    "RS_SYNTHETIC_SPLITS",
    "SYNTHETIC_CLASSES",
    "generate_synthetic_image",
    "generate_synthetic_split",
    "prepare_rs_synthetic",
    "register_rs_synthetic",
    "register_rs_synthetic_from_cfg",
]

register_rs_synthetic()
