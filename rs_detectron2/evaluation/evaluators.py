"""The evaluators of a dataset for an RS detector: COCO or LVIS AP by the dataset's
``evaluator_type``, with oLRP beside it. One function for both config systems:
``RSTrainer.build_evaluator`` (yacs) calls it, and LazyConfigs name it as
``dataloader.evaluator``'s ``_target_``."""
from typing import Optional, Sequence

from detectron2.data import MetadataCatalog
from detectron2.evaluation import COCOEvaluator, DatasetEvaluator, DatasetEvaluators

from .lvis_evaluation import RSLVISEvaluator
from .olrp import OLRPEvaluator

__all__ = ["build_rs_evaluator"]


def build_rs_evaluator(
    dataset_name: str,
    tasks: Sequence[str] = ("bbox",),
    output_dir: Optional[str] = None,
    olrp: bool = True,
    max_dets_per_image: int = 100,
    distributed: bool = True,
) -> DatasetEvaluator:
    """The evaluators of ``dataset_name`` for its metadata's ``evaluator_type``.

    "coco": :class:`COCOEvaluator`; "lvis": detectron2's LVIS evaluator (AP with APr / APc /
    APf) made to run on numpy 2 (:class:`RSLVISEvaluator`), at most ``max_dets_per_image``
    detections per image. Both on ``tasks`` ("bbox", and "segm" for masks), writing to
    ``output_dir``, and, when ``olrp``, beside an :class:`OLRPEvaluator` on the same tasks
    (oLRP tables and per-class optimal score thresholds in ``olrp_thresholds_<task>.json``).

    Raises NotImplementedError for any other type (which detectron2's ``DefaultTrainer.test``
    reports as "no evaluator" and skips the dataset).
    """
    tasks = tuple(tasks)
    evaluator_type = MetadataCatalog.get(dataset_name).get("evaluator_type", None)
    if evaluator_type == "coco":
        ap = COCOEvaluator(dataset_name, tasks=tasks, distributed=distributed,
                           output_dir=output_dir)
    elif evaluator_type == "lvis":
        ap = RSLVISEvaluator(dataset_name, tasks=tasks, distributed=distributed,
                             output_dir=output_dir, max_dets_per_image=max_dets_per_image)
    else:
        raise NotImplementedError(
            f"no RS evaluator for dataset '{dataset_name}' with evaluator_type "
            f"'{evaluator_type}': only 'coco' and 'lvis' are supported."
        )
    if not olrp:
        return ap
    return DatasetEvaluators([
        ap, OLRPEvaluator(dataset_name, tasks=tasks, distributed=distributed,
                          output_dir=output_dir)])
