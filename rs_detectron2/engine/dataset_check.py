"""A start-up check that the datasets' classes fit the model's classifier.

detectron2's softmax heads fail late with a bare ``IndexError`` when a dataset has more
classes than ``NUM_CLASSES``; RS heads (sigmoid, no background) would even train without a
word, every class at or beyond ``NUM_CLASSES`` silently becoming a negative. The check
stops a run before it starts, naming both numbers and the key to set.
"""
from typing import Any, Sequence, Tuple

from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog

__all__ = ["model_num_classes", "lazy_model_num_classes", "check_dataset_classes",
           "check_classes"]


def model_num_classes(cfg: CfgNode) -> Tuple[str, int]:
    """The config key holding the number of classes of ``cfg``'s model, and its value:
    ``MODEL.RETINANET.NUM_CLASSES`` for the meta-architectures built on detectron2's
    RetinaNet (RetinaNet, RSRetinaNet, RSPAA, PAA, RSYOLACT, YOLACT),
    ``MODEL.SOLOV2.NUM_CLASSES`` for SOLOv2 and RS-SOLOv2, ``MODEL.ROI_HEADS.NUM_CLASSES``
    otherwise."""
    from detectron2.modeling import META_ARCH_REGISTRY, RetinaNet

    name = cfg.MODEL.META_ARCHITECTURE
    arch = META_ARCH_REGISTRY.get(name) if name in META_ARCH_REGISTRY else None
    from ..modeling.meta_arch import SOLOv2

    if isinstance(arch, type) and issubclass(arch, SOLOv2):
        return "MODEL.SOLOV2.NUM_CLASSES", int(cfg.MODEL.SOLOV2.NUM_CLASSES)
    if (isinstance(arch, type) and issubclass(arch, RetinaNet)) or "RetinaNet" in name:
        return "MODEL.RETINANET.NUM_CLASSES", int(cfg.MODEL.RETINANET.NUM_CLASSES)
    return "MODEL.ROI_HEADS.NUM_CLASSES", int(cfg.MODEL.ROI_HEADS.NUM_CLASSES)


def lazy_model_num_classes(cfg: Any) -> Tuple[str, int]:
    """The same for a LazyConfig: ``model.num_classes`` (one-stage, RetinaNet-style) or
    ``model.roi_heads.num_classes`` (R-CNN). Raises ValueError when it has neither."""
    model = cfg.model
    if "roi_heads" in model and "num_classes" in model.roi_heads:
        return "model.roi_heads.num_classes", int(model.roi_heads.num_classes)
    if "num_classes" in model:
        return "model.num_classes", int(model.num_classes)
    raise ValueError("the LazyConfig's model sets neither model.roi_heads.num_classes nor "
                     "model.num_classes: the dataset check cannot tell its classes")


def check_dataset_classes(cfg: CfgNode, dataset_names: Sequence[str],
                          evaluated: bool = False) -> None:
    """:func:`check_classes` with the number of classes of ``cfg``'s model
    (:func:`model_num_classes`)."""
    key, num_classes = model_num_classes(cfg)
    check_classes(dataset_names, num_classes, key, evaluated)


def check_classes(dataset_names: Sequence[str], num_classes: int, key: str,
                  evaluated: bool = False) -> None:
    """Raise ValueError when a dataset's ``thing_classes`` outnumber the model's classes,
    and, for a dataset that is ``evaluated``, also when the model has more classes than it
    (detectron2's COCO evaluator fails on a prediction of a class the dataset lacks, after
    the whole training).

    A dataset whose metadata has no ``thing_classes`` yet (a COCO JSON registered with
    ``register_coco_instances`` fills them when it is loaded) is loaded first; a dataset
    without classes at all is not checked.
    ``key`` names the config key holding ``num_classes``, for the message.
    """
    for name in dataset_names:
        classes = MetadataCatalog.get(name).get("thing_classes", None)
        if classes is None and name in DatasetCatalog:
            DatasetCatalog.get(name)  # loading a COCO JSON sets its thing_classes
            classes = MetadataCatalog.get(name).get("thing_classes", None)
        if classes is not None and len(classes) > num_classes:
            raise ValueError(
                f"dataset '{name}' has {len(classes)} classes ({', '.join(map(str, classes[:8]))}"
                f"{', ...' if len(classes) > 8 else ''}) but the model has {key} = "
                f"{num_classes}: set {_setting(key, len(classes))} (on the command line or in the "
                f"config). With fewer outputs than classes, an RS head would treat every "
                f"class from {num_classes} on as background without a word.")
        if evaluated and classes is not None and len(classes) < num_classes:
            raise ValueError(
                f"evaluation dataset '{name}' has {len(classes)} classes but the model has "
                f"{key} = {num_classes}: set {_setting(key, len(classes))} (the evaluator rejects "
                f"predictions of a class the dataset does not have).")


def _setting(key: str, value: int) -> str:
    """How the command line sets ``key``: ``KEY VALUE`` (yacs) or ``key=value`` (LazyConfig)."""
    return f"{key}={value}" if key.islower() else f"{key} {value}"
