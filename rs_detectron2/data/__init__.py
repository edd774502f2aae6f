"""Built-in synthetic datasets.

* ``rs_synthetic_train`` / ``rs_synthetic_val``: shapes (:mod:`.synthetic_shapes`);
* ``rs_synthetic_hard_train`` / ``rs_synthetic_hard_val``: look-alike glyphs on cluttered
  backgrounds (:mod:`.synthetic_glyphs`);
* ``rs_synthetic_lvis_train`` / ``rs_synthetic_lvis_val``: long-tailed, LVIS v1 format with
  federated labels (:mod:`.synthetic_lvis`).

Importing this package registers all six with :data:`RS_SYNTHETIC_DEFAULTS` (1000 / 200
images of 192 px, seed 0: the defaults of ``cfg.DATASETS.RS_SYNTHETIC*`` and the sizes of
every shipped config) without generating anything; call
:func:`register_rs_synthetic_datasets` with a config to apply its keys (``train_net.py``
does). What the generators share is in :mod:`.synthetic_core` and :mod:`.synthetic_strokes`.
"""
from .builtin import (
    RS_SYNTHETIC_DEFAULTS,
    RS_SYNTHETIC_FAMILIES,
    RS_SYNTHETIC_HARD_SPLITS,
    RS_SYNTHETIC_LVIS_SPLITS,
    RS_SYNTHETIC_SPLITS,
    SyntheticSizes,
    prepare_rs_synthetic,
    register_all_rs_synthetic_from_cfg,
    register_rs_synthetic,
    register_rs_synthetic_datasets,
    register_rs_synthetic_family,
    register_rs_synthetic_from_cfg,
    register_rs_synthetic_hard_from_cfg,
    register_rs_synthetic_lvis,
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
    "RS_SYNTHETIC_DEFAULTS",
    "RS_SYNTHETIC_FAMILIES",
    "RS_SYNTHETIC_HARD_SPLITS",
    "RS_SYNTHETIC_LVIS_SPLITS",
    "RS_SYNTHETIC_SPLITS",
    "SYNTHETIC_CLASSES",
    "SyntheticSizes",
    "generate_glyph_image",
    "generate_glyph_split",
    "generate_lvis_split",
    "generate_synthetic_image",
    "generate_synthetic_split",
    "prepare_rs_synthetic",
    "register_rs_synthetic_datasets",
    "register_rs_synthetic_family",
    # Older names (aliases of the two above, see .builtin).
    "register_all_rs_synthetic_from_cfg",
    "register_rs_synthetic",
    "register_rs_synthetic_from_cfg",
    "register_rs_synthetic_hard_from_cfg",
    "register_rs_synthetic_lvis",
]

register_rs_synthetic_datasets()
