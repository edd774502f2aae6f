"""The fit / holdout cut of a train split, on which the learning rate is chosen.

Every run trains on the fit part; the grid runs are also evaluated on the holdout part,
so the learning rate is never chosen on the val images the report compares. The cut is
deterministic (by ``image_id``), so every run of every model holds out the same images.
"""
import functools
from typing import List, Sequence, Tuple


def split_fit_holdout(dicts: Sequence[dict], fraction: float) -> Tuple[List[dict], List[dict]]:
    """Cut dataset dicts into (fit, holdout): the holdout is the last ``round(fraction *
    N)`` images by ``image_id`` (at least 1, at most N - 1). Deterministic, disjoint, and
    together they are the whole input."""
    ordered = sorted(dicts, key=lambda d: d["image_id"])
    n = len(ordered)
    if n < 2:
        raise ValueError(f"cannot split {n} image(s) into a fit and a holdout part")
    cut = n - num_holdout(n, fraction)
    return ordered[:cut], ordered[cut:]


def num_holdout(num_images: int, fraction: float) -> int:
    """How many of ``num_images`` the holdout part has: ``round(fraction * N)``, at least
    1 and at most N - 1."""
    return min(max(int(num_images * float(fraction) + 0.5), 1), num_images - 1)


def fit_holdout_names(train_name: str) -> Tuple[str, str]:
    """The names the two parts of ``train_name`` are registered under."""
    return f"{train_name}_fit", f"{train_name}_holdout"


def _load_part(train_name: str, fraction: float, part: int) -> List[dict]:
    from detectron2.data import DatasetCatalog

    return split_fit_holdout(DatasetCatalog.get(train_name), fraction)[part]


def register_fit_holdout(train_name: str, fraction: float) -> Tuple[str, str]:
    """Register ``<train_name>_fit`` and ``<train_name>_holdout`` (lazily: the train split
    is loaded when one of them is), with the train split's class metadata and no
    ``json_file`` (COCOEvaluator converts the dicts itself). ``train_name`` must be
    registered already. Returns the two names."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    if train_name not in DatasetCatalog:
        raise KeyError(f"dataset {train_name!r} is not registered (known: {sorted(DatasetCatalog)})")
    source = MetadataCatalog.get(train_name)
    names = fit_holdout_names(train_name)
    for part, name in enumerate(names):
        if name in DatasetCatalog:
            DatasetCatalog.remove(name)
        if name in MetadataCatalog:
            MetadataCatalog.remove(name)
        DatasetCatalog.register(name, functools.partial(_load_part, train_name, float(fraction), part))
        meta = dict(thing_classes=list(source.thing_classes),
                    evaluator_type=source.get("evaluator_type", "coco"))
        if source.get("thing_dataset_id_to_contiguous_id", None) is not None:
            meta["thing_dataset_id_to_contiguous_id"] = dict(source.thing_dataset_id_to_contiguous_id)
        MetadataCatalog.get(name).set(**meta)
    return names
