"""Registration of the built-in synthetic dataset in detectron2's catalogs.

Two datasets are registered: ``rs_synthetic_train`` and ``rs_synthetic_val``.  Their
``DatasetCatalog`` entries are lazy: the split is generated (once, then cached on
disk) the first time the dataset is loaded.  Cache layout::

    <root>/rs_synthetic/v<version>_img<size>_n<num_images>_seed<seed>/<split>/
        images/<split>_000000.png ...
        annotations.json

``root`` defaults to ``$DETECTRON2_DATASETS`` or ``./datasets`` (detectron2's convention).
"""
import functools
import hashlib
import os
from typing import Dict, Optional, Tuple

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json

from .synthetic_shapes import GENERATOR_VERSION, SYNTHETIC_CLASSES, generate_synthetic_split

__all__ = [
    "RS_SYNTHETIC_SPLITS",
    "register_rs_synthetic",
    "register_rs_synthetic_from_cfg",
    "prepare_rs_synthetic",
]

# Dataset name -> split name.
RS_SYNTHETIC_SPLITS = {"rs_synthetic_train": "train", "rs_synthetic_val": "val"}

# Dataset name -> generation arguments of the current registration.
_REGISTERED: Dict[str, dict] = {}


def _default_root() -> str:
    return os.environ.get("DETECTRON2_DATASETS", "datasets")


def _split_seed(seed: int, split: str) -> int:
    """Seed of one split, derived from the user seed: train and val never share images."""
    digest = hashlib.sha256(f"rs_synthetic:{int(seed)}:{split}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def _split_dir(root: str, split: str, num_images: int, image_size: int, seed: int) -> str:
    tag = f"v{GENERATOR_VERSION}_img{int(image_size)}_n{int(num_images)}_seed{int(seed)}"
    return os.path.join(root, "rs_synthetic", tag, split)


def prepare_rs_synthetic(name: str) -> str:
    """Generate the registered dataset ``name`` if it is not cached yet; returns its
    COCO JSON path (also ``MetadataCatalog.get(name).json_file``)."""
    if name not in _REGISTERED:
        raise KeyError(f"{name!r} is not a registered rs_synthetic dataset "
                       f"(known: {sorted(_REGISTERED)})")
    return _generate(**_REGISTERED[name])


def _generate(out_dir, num_images, image_size, split_seed, split, **_unused) -> str:
    return generate_synthetic_split(out_dir, num_images, image_size, split_seed, split)


def _load_rs_synthetic(name: str, args: dict):
    """DatasetCatalog function: generate the split if needed, then load it."""
    json_file = _generate(**args)
    return load_coco_json(json_file, os.path.join(args["out_dir"], "images"), name)


def register_rs_synthetic(
    root: Optional[str] = None,
    num_train: int = 1000,
    num_val: int = 200,
    image_size: int = 256,
    seed: int = 0,
) -> Tuple[str, str]:
    """Register (or re-register, replacing earlier entries) ``rs_synthetic_train`` and
    ``rs_synthetic_val``.  Nothing is generated here: a split is generated when it is
    first loaded (``DatasetCatalog.get``) or by :func:`prepare_rs_synthetic`.

    Args:
        root: cache root; None or "" means ``$DETECTRON2_DATASETS`` or ``./datasets``.
        num_train, num_val: number of images of each split.
        image_size: side of the square images, in pixels.
        seed: generator seed (train and val use different seeds derived from it).

    Returns:
        the two dataset names.
    """
    root = os.path.abspath(root if root else _default_root())
    sizes = {"rs_synthetic_train": int(num_train), "rs_synthetic_val": int(num_val)}
    for name, split in RS_SYNTHETIC_SPLITS.items():
        num_images = sizes[name]
        if num_images < 1:
            raise ValueError(f"{name}: the number of images must be >= 1, got {num_images}")
        out_dir = _split_dir(root, split, num_images, image_size, seed)
        json_file = os.path.join(out_dir, "annotations.json")
        image_root = os.path.join(out_dir, "images")
        if name in DatasetCatalog:
            DatasetCatalog.remove(name)
        if name in MetadataCatalog:
            MetadataCatalog.remove(name)
        args = dict(root=root, out_dir=out_dir, num_images=num_images, image_size=int(image_size),
                    seed=int(seed), split_seed=_split_seed(seed, split), split=split)
        _REGISTERED[name] = args
        DatasetCatalog.register(name, functools.partial(_load_rs_synthetic, name, dict(args)))
        MetadataCatalog.get(name).set(
            thing_classes=list(SYNTHETIC_CLASSES),
            thing_dataset_id_to_contiguous_id={i + 1: i for i in range(len(SYNTHETIC_CLASSES))},
            evaluator_type="coco",
            json_file=json_file,
            image_root=image_root,
        )
    return tuple(RS_SYNTHETIC_SPLITS)


def register_rs_synthetic_from_cfg(cfg) -> Tuple[str, str]:
    """:func:`register_rs_synthetic` with ``cfg.DATASETS.RS_SYNTHETIC.{ROOT, NUM_TRAIN,
    NUM_VAL, IMAGE_SIZE, SEED}`` (keys added by ``rs_detectron2.config.add_rs_config``)."""
    c = cfg.DATASETS.RS_SYNTHETIC
    return register_rs_synthetic(
        root=c.ROOT or None,
        num_train=c.NUM_TRAIN,
        num_val=c.NUM_VAL,
        image_size=c.IMAGE_SIZE,
        seed=c.SEED,
    )
