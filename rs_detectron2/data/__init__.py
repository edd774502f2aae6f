"""Built-in synthetic datasets.

* ``rs_synthetic_train`` / ``rs_synthetic_val``: shapes (:mod:`.synthetic_shapes`);
* ``rs_synthetic_hard_train`` / ``rs_synthetic_hard_val``: look-alike glyphs on cluttered
  backgrounds (:mod:`.synthetic_glyphs`);
* ``rs_synthetic_lvis_train`` / ``rs_synthetic_lvis_val``: long-tailed, LVIS v1 format with
  federated labels (:mod:`.synthetic_lvis`).

Importing this package registers all six with the default sizes of
``cfg.DATASETS.RS_SYNTHETIC`` (1000 / 200 images of 256 px, seed 0),
``cfg.DATASETS.RS_SYNTHETIC_HARD`` and ``cfg.DATASETS.RS_SYNTHETIC_LVIS`` (1000 / 200 images
of 192 px, seed 0) without generating anything; call
:func:`register_all_rs_synthetic_from_cfg` (or one family's ``register_*_from_cfg``) to apply
a config's sizes.
"""
from .builtin import (
    RS_SYNTHETIC_HARD_SPLITS,
    RS_SYNTHETIC_LVIS_SPLITS,
    RS_SYNTHETIC_SPLITS,
    prepare_rs_synthetic,
    register_all_rs_synthetic_from_cfg,
    register_rs_synthetic,
    register_rs_synthetic_from_cfg,
    register_rs_synthetic_hard,
    register_rs_synthetic_hard_from_cfg,
    register_rs_synthetic_lvis,
    register_rs_synthetic_lvis_from_cfg,
)
from .synthetic_glyphs import (
    GLYPH_CLASSES,
    GLYPH_GENERATOR_VERSION,
    generate_glyph_image,
    generate_glyph_split,
)
from .synthetic_lvis import LVIS_CLASSES, LVIS_GENERATOR_VERSION, generate_lvis_split
from .synthetic_shapes import (
    GENERATOR_VERSION,
    SYNTHETIC_CLASSES,
    generate_synthetic_image,
    generate_synthetic_split,
)

__all__ = [
    "GENERATOR_VERSION",
    "GLYPH_CLASSES",
    "GLYPH_GENERATOR_VERSION",
    "LVIS_CLASSES",
    "LVIS_GENERATOR_VERSION",
    "RS_SYNTHETIC_HARD_SPLITS",
    "RS_SYNTHETIC_LVIS_SPLITS",
    "RS_SYNTHETIC_SPLITS",
    "SYNTHETIC_CLASSES",
    "generate_glyph_image",
    "generate_glyph_split",
    "generate_lvis_split",
    "generate_synthetic_image",
    "generate_synthetic_split",
    "prepare_rs_synthetic",
    "register_rs_synthetic",
    "register_rs_synthetic_from_cfg",
    "register_rs_synthetic_hard",
    "register_rs_synthetic_hard_from_cfg",
    "register_rs_synthetic_lvis",
    "register_rs_synthetic_lvis_from_cfg",
]

register_rs_synthetic()
register_rs_synthetic_hard()
register_rs_synthetic_lvis()
