"""Registration of the built-in synthetic datasets in detectron2's catalogs.

Three families, each with a train and a val split:

* ``rs_synthetic_train`` / ``rs_synthetic_val``: shapes (:mod:`.synthetic_shapes`);
* ``rs_synthetic_hard_train`` / ``rs_synthetic_hard_val``: look-alike glyphs on cluttered
  backgrounds (:mod:`.synthetic_glyphs`);
* ``rs_synthetic_lvis_train`` / ``rs_synthetic_lvis_val``: a long-tailed dataset in LVIS v1
  format with federated labels (:mod:`.synthetic_lvis`), loaded by detectron2's
  ``load_lvis_json`` and evaluated by LVIS's evaluator (``evaluator_type`` "lvis").

One registration path: :func:`register_rs_synthetic_datasets` registers every family from
its config node ``cfg.DATASETS.<FAMILY>`` (``train_net.py`` and ``demo.py`` call it with
their config) or, without a config, with :data:`RS_SYNTHETIC_DEFAULTS`, the sizes of the
shipped configs and the defaults of those keys (importing :mod:`rs_detectron2.data` does
that); :func:`register_rs_synthetic_family` registers one family with explicit sizes.

Their ``DatasetCatalog`` entries are lazy: a split is generated (once, then cached on
disk) the first time the dataset is loaded.  Cache layout::

    <root>/<family>/v<version>_img<size>_n<num_images>_seed<seed>/<split>/
        images/<split>_000000.png ...
        annotations.json

with ``<family>`` "rs_synthetic", "rs_synthetic_hard" or "rs_synthetic_lvis" and
``<version>`` the version of that family's generator.  ``root`` defaults to
``$DETECTRON2_DATASETS`` or ``./datasets`` (detectron2's convention).
"""
import functools
import hashlib
import os
from typing import Callable, Dict, NamedTuple, Optional, Sequence, Tuple

from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json, load_lvis_json

from . import synthetic_glyphs, synthetic_lvis, synthetic_shapes

__all__ = [
    "RS_SYNTHETIC_DEFAULTS",
    "RS_SYNTHETIC_FAMILIES",
    "RS_SYNTHETIC_SPLITS",
    "RS_SYNTHETIC_HARD_SPLITS",
    "RS_SYNTHETIC_LVIS_SPLITS",
    "SyntheticSizes",
    "prepare_rs_synthetic",
    "register_rs_synthetic_datasets",
    "register_rs_synthetic_family",
    # Older names (aliases, see the end of the module).
    "register_all_rs_synthetic_from_cfg",
    "register_rs_synthetic",
    "register_rs_synthetic_from_cfg",
    "register_rs_synthetic_hard_from_cfg",
    "register_rs_synthetic_lvis",
]

# Dataset name -> split name.
RS_SYNTHETIC_SPLITS = {"rs_synthetic_train": "train", "rs_synthetic_val": "val"}
RS_SYNTHETIC_HARD_SPLITS = {"rs_synthetic_hard_train": "train", "rs_synthetic_hard_val": "val"}
RS_SYNTHETIC_LVIS_SPLITS = {"rs_synthetic_lvis_train": "train", "rs_synthetic_lvis_val": "val"}


class SyntheticSizes(NamedTuple):
    """What a family generates: ``cfg.DATASETS.<FAMILY>.{NUM_TRAIN, NUM_VAL, IMAGE_SIZE,
    SEED}``."""

    num_train: int
    num_val: int
    image_size: int
    seed: int


# The sizes of every shipped config (configs/Synthetic/), for all families: the defaults of
# the config keys (rs_detectron2.config.add_rs_config) and of the registration functions,
# so what importing this package registers is what train_net.py generates for those configs.
RS_SYNTHETIC_DEFAULTS = SyntheticSizes(num_train=1000, num_val=200, image_size=192, seed=0)


class _Family(NamedTuple):
    """A built-in synthetic dataset family: its splits and generator."""

    splits: Dict[str, str]  # dataset name -> split name
    version: int  # generator version (part of the cache path)
    classes: Tuple[str, ...]
    generate_split: Callable[..., str]  # (out_dir, num_images, image_size, seed, split_name)
    evaluator_type: str = "coco"  # also the annotation format: "coco" or "lvis"


# Family name (the cache folder, also salting the split seeds) -> family.  The generators
# are looked up when called, so the modules' current functions are used.
_FAMILIES: Dict[str, _Family] = {
    "rs_synthetic": _Family(
        RS_SYNTHETIC_SPLITS, synthetic_shapes.GENERATOR_VERSION,
        tuple(synthetic_shapes.SYNTHETIC_CLASSES),
        lambda *a: synthetic_shapes.generate_synthetic_split(*a)),
    "rs_synthetic_hard": _Family(
        RS_SYNTHETIC_HARD_SPLITS, synthetic_glyphs.GLYPH_GENERATOR_VERSION,
        tuple(synthetic_glyphs.GLYPH_CLASSES),
        lambda *a: synthetic_glyphs.generate_glyph_split(*a)),
    # Val copies train's categories (LVIS's frequency tags): generated after train.
    "rs_synthetic_lvis": _Family(
        RS_SYNTHETIC_LVIS_SPLITS, synthetic_lvis.LVIS_GENERATOR_VERSION,
        tuple(synthetic_lvis.LVIS_CLASSES),
        lambda *a: synthetic_lvis.generate_lvis_split(*a, train_json=_lvis_train_json(a[4])),
        evaluator_type="lvis"),
}

# The family names; each has the config node ``cfg.DATASETS.<FAMILY NAME IN CAPITALS>``.
RS_SYNTHETIC_FAMILIES: Tuple[str, ...] = tuple(_FAMILIES)

# Dataset name -> generation arguments of the current registration.
_REGISTERED: Dict[str, dict] = {}


def _lvis_train_json(split: str) -> str:
    """The registered rs_synthetic_lvis train split's JSON (generated if needed), which the
    other splits take their categories from; "" for the train split itself."""
    return "" if split == "train" else prepare_rs_synthetic("rs_synthetic_lvis_train")


def default_datasets_root() -> str:
    """detectron2's datasets folder: ``$DETECTRON2_DATASETS``, else ``./datasets``."""
    return os.environ.get("DETECTRON2_DATASETS", "datasets")


def _split_seed(seed: int, split: str, family: str = "rs_synthetic") -> int:
    """Seed of one split, derived from the user seed: train and val never share images
    (nor do two families)."""
    digest = hashlib.sha256(f"{family}:{int(seed)}:{split}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def _split_dir(root: str, split: str, num_images: int, image_size: int, seed: int,
               family: str = "rs_synthetic") -> str:
    version = _FAMILIES[family].version
    tag = f"v{version}_img{int(image_size)}_n{int(num_images)}_seed{int(seed)}"
    return os.path.join(root, family, tag, split)


def prepare_rs_synthetic(name: str) -> str:
    """Generate the registered built-in synthetic dataset ``name`` (of any family) if it is
    not cached yet; returns its annotation JSON path (also
    ``MetadataCatalog.get(name).json_file``)."""
    if name not in _REGISTERED:
        raise KeyError(f"{name!r} is not a registered built-in synthetic dataset "
                       f"(known: {sorted(_REGISTERED)})")
    return _generate(**_REGISTERED[name])


def _generate(out_dir, num_images, image_size, split_seed, split,
              family="rs_synthetic", **_unused) -> str:
    return _FAMILIES[family].generate_split(out_dir, num_images, image_size, split_seed, split)


def _load_rs_synthetic(name: str, args: dict):
    """DatasetCatalog function: generate the split if needed, then load it."""
    json_file = _generate(**args)
    if _FAMILIES[args["family"]].evaluator_type == "lvis":
        # detectron2's LVIS loader: image paths from coco_url under image_root + "/",
        # contiguous ids = LVIS id - 1, and the federated labels of each image
        # (neg_category_ids, not_exhaustive_category_ids) in its record.
        return load_lvis_json(json_file, args["out_dir"] + os.sep)
    return load_coco_json(json_file, os.path.join(args["out_dir"], "images"), name)


def register_rs_synthetic_family(
    family: str,
    root: Optional[str] = None,
    num_train: int = RS_SYNTHETIC_DEFAULTS.num_train,
    num_val: int = RS_SYNTHETIC_DEFAULTS.num_val,
    image_size: int = RS_SYNTHETIC_DEFAULTS.image_size,
    seed: int = RS_SYNTHETIC_DEFAULTS.seed,
) -> Tuple[str, str]:
    """Register (or re-register, replacing earlier entries) the train and val datasets of
    ``family`` (one of :data:`RS_SYNTHETIC_FAMILIES`).  Nothing is generated here: a split
    is generated when it is first loaded (``DatasetCatalog.get``) or by
    :func:`prepare_rs_synthetic`.

    Args:
        family: "rs_synthetic", "rs_synthetic_hard" or "rs_synthetic_lvis".
        root: cache root; None or "" means ``$DETECTRON2_DATASETS`` or ``./datasets``.
        num_train, num_val: number of images of each split (the long tail of
            "rs_synthetic_lvis" scales with ``num_train``, see :mod:`.synthetic_lvis`).
        image_size: side of the square images, in pixels.
        seed: generator seed (train and val use different seeds derived from it).

    Returns:
        the two dataset names.
    """
    fam = _FAMILIES[family]
    root = os.path.abspath(root if root else default_datasets_root())
    sizes = dict(train=int(num_train), val=int(num_val))
    for name, split in fam.splits.items():
        num_images = sizes[split]
        if num_images < 1:
            raise ValueError(f"{name}: the number of images must be >= 1, got {num_images}")
        out_dir = _split_dir(root, split, num_images, image_size, seed, family)
        json_file = os.path.join(out_dir, "annotations.json")
        image_root = os.path.join(out_dir, "images")
        if name in DatasetCatalog:
            DatasetCatalog.remove(name)
        if name in MetadataCatalog:
            MetadataCatalog.remove(name)
        args = dict(root=root, out_dir=out_dir, num_images=num_images, image_size=int(image_size),
                    seed=int(seed), split_seed=_split_seed(seed, split, family), split=split,
                    family=family)
        _REGISTERED[name] = args
        DatasetCatalog.register(name, functools.partial(_load_rs_synthetic, name, dict(args)))
        meta = dict(thing_classes=list(fam.classes), evaluator_type=fam.evaluator_type,
                    json_file=json_file, image_root=image_root)
        if fam.evaluator_type == "coco":
            meta["thing_dataset_id_to_contiguous_id"] = {i + 1: i for i in range(len(fam.classes))}
        # (LVIS metadata has no id map: detectron2's LVIS loader and evaluator then use
        # contiguous id = LVIS id - 1, as for lvis_v1.)
        MetadataCatalog.get(name).set(**meta)
    return tuple(fam.splits)


def register_rs_synthetic_datasets(
    cfg: Optional[CfgNode] = None, families: Sequence[str] = RS_SYNTHETIC_FAMILIES
) -> Tuple[str, ...]:
    """Register the datasets of ``families`` (default: all) with the keys of their nodes
    ``cfg.DATASETS.<FAMILY>`` (``ROOT``, ``NUM_TRAIN``, ``NUM_VAL``, ``IMAGE_SIZE``,
    ``SEED``; added by ``rs_detectron2.config.add_rs_config``), or with
    :data:`RS_SYNTHETIC_DEFAULTS` when ``cfg`` is None (what importing this package does).

    ``train_net.py`` calls it with its config; call it after changing these keys in Python
    to get the same data.  Lazy, like :func:`register_rs_synthetic_family`.

    Returns:
        the registered dataset names.
    """
    names: Tuple[str, ...] = ()
    for family in families:
        if cfg is None:
            names += register_rs_synthetic_family(family)
        else:
            node = cfg.DATASETS[family.upper()]
            names += register_rs_synthetic_family(family, node.ROOT or None, node.NUM_TRAIN,
                                                  node.NUM_VAL, node.IMAGE_SIZE, node.SEED)
    return names


# Older names of the functions above, kept for their callers.
register_all_rs_synthetic_from_cfg = register_rs_synthetic_datasets
register_rs_synthetic = functools.partial(register_rs_synthetic_family, "rs_synthetic")
register_rs_synthetic_lvis = functools.partial(register_rs_synthetic_family, "rs_synthetic_lvis")
register_rs_synthetic_from_cfg = functools.partial(
    register_rs_synthetic_datasets, families=("rs_synthetic",))
register_rs_synthetic_hard_from_cfg = functools.partial(
    register_rs_synthetic_datasets, families=("rs_synthetic_hard",))
