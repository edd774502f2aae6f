"""One run of the comparison, in its own subprocess.

``--run-one <run dir>/spec.json`` trains one model as ``train_net.py`` would (config from
:func:`~rs_detectron2.engine.default_rs_setup` plus the spec's overrides) on the fit part,
evaluates the final model on the spec's test datasets (holdout and val, or val) and, for
the seed runs, its intermediate checkpoints on val; then writes the result JSON.
``--curve-one <result>.json`` evaluates the intermediate checkpoints of a finished run and
rewrites its JSON. A run whose loss became NaN/inf is recorded as "diverged"; any other
failure (an evaluation that gives no results included) raises, so the subprocess fails and
the driver stops with its output.
"""
import json
import os
import time
from typing import Any, Dict, Mapping, Optional, Sequence

from ..machine import machine_info, versions
from .holdout import fit_holdout_names, register_fit_holdout
from .layout import checkpoint_for
from .results import clean, finite, read_json, write_json

# The parent sets it to its clock when it starts a subprocess: the run's wall time then
# counts the imports too.
LAUNCH_ENV = "RS_COMPARE_LAUNCH_TIME"
_IMPORTED_AT = time.time()


def since_launch() -> float:
    """Seconds since the parent started this subprocess (imports included), or since this
    module was imported when run by hand."""
    try:
        start = float(os.environ[LAUNCH_ENV])
    except (KeyError, ValueError):
        start = _IMPORTED_AT
    return time.time() - start


def setup_run(spec: Mapping[str, Any]):
    """Config, registration and logging of one run, as train_net.py does it, then the
    fit / holdout parts of the spec's train split."""
    from detectron2.engine import default_argument_parser

    from rs_detectron2.engine import default_rs_setup

    args = default_argument_parser().parse_args(["--config-file", spec["config_path"], *spec["opts"]])
    cfg = default_rs_setup(args)  # registers the built-in datasets with the config's sizes
    register_fit_holdout(spec["train_dataset"], spec["holdout_fraction"])
    return cfg


def evaluated_tasks(cfg) -> Sequence[str]:
    """The COCO tasks a run is evaluated on: bbox, and segm for a mask model."""
    return ("bbox", "segm") if cfg.MODEL.MASK_ON else ("bbox",)


def eval_results(results: Mapping[str, Any], datasets: Sequence[str],
                 tasks: Sequence[str]) -> Dict[str, Any]:
    """``DefaultTrainer.test``'s return value as dataset -> task -> metric, NaN -> None.

    ``test`` returns a single dataset's results unwrapped; they are wrapped again. Raises
    RuntimeError when a dataset or a task has no results (no evaluator, nothing
    evaluated): that is a broken run, not one without an AP.
    """
    if len(datasets) == 1 and datasets[0] not in results:
        results = {datasets[0]: results}
    missing = [f"{name}/{task}" for name in datasets for task in tasks
               if task not in (results.get(name) or {})]
    if missing:
        raise RuntimeError(f"the evaluation gave no results for {', '.join(missing)} "
                           f"(results: {dict(results)})")
    return clean(dict(results))


def build_trainer(cfg):
    """An :class:`RSTrainer` of ``cfg`` without detectron2's EvalHook.

    The runs have ``TEST.EVAL_PERIOD 0``, so that hook would only evaluate the final model
    inside ``train()`` and keep the results where no public API returns them; the run
    evaluates the final model itself with ``test``, whose return value is public.
    """
    from detectron2.engine import hooks

    from rs_detectron2.engine import RSTrainer

    class FinalEvalTrainer(RSTrainer):
        def build_hooks(self):
            return [h for h in super().build_hooks() if not isinstance(h, hooks.EvalHook)]

    return FinalEvalTrainer(cfg)


def _coco_evaluator(cfg, dataset_name: str, output_dir: Optional[str]):
    from detectron2.data import MetadataCatalog
    from detectron2.evaluation import COCOEvaluator

    if MetadataCatalog.get(dataset_name).get("json_file", None) is not None:
        output_dir = None  # nothing to convert: write no prediction files
    return COCOEvaluator(dataset_name, tasks=evaluated_tasks(cfg), distributed=True,
                         output_dir=output_dir)


def curve_point(iteration: int, res: Mapping[str, Any]) -> dict:
    """One point of a learning curve: the iteration, val box AP and (mask models) mask AP."""
    return dict(iter=int(iteration),
                box_AP=finite(res.get("bbox", {}).get("AP")),
                mask_AP=finite(res.get("segm", {}).get("AP")) if "segm" in res else None)


def evaluate_curve(cfg, spec: Mapping[str, Any], result: dict) -> None:
    """Evaluate the run's intermediate checkpoints on val; completes ``result["curve"]``."""
    from detectron2.checkpoint import DetectionCheckpointer

    from rs_detectron2.engine import RSTrainer

    run_dir = spec["run_dir"]
    val = spec["val_dataset"]
    iters = spec["curve_iters"][:-1]
    missing = [it for it in iters if not os.path.exists(checkpoint_for(run_dir, it))]
    if missing:
        raise FileNotFoundError(f"curve checkpoints missing in {run_dir}: iterations {missing}")
    cfg_val = cfg.clone()
    cfg_val.defrost()
    cfg_val.DATASETS.TEST = (val,)
    cfg_val.freeze()
    model = RSTrainer.build_model(cfg_val)
    points = []
    start = time.perf_counter()
    for it in iters:
        DetectionCheckpointer(model).load(checkpoint_for(run_dir, it))
        evaluator = _coco_evaluator(cfg_val, val, os.path.join(run_dir, f"inference_curve_{it}"))
        res = RSTrainer.test(cfg_val, model, evaluators=[evaluator])
        points.append(curve_point(it, eval_results(res, (val,), evaluated_tasks(cfg_val))[val]))
    final = [p for p in result["curve"] if p["iter"] == spec["max_iter"]]
    result["curve"] = points + final
    result["curve_complete"] = True
    result["curve_eval_seconds"] = time.perf_counter() - start
    result["curve_eval_images"] = len(iters) * result.get("num_val_images", 0)


def delete_curve_checkpoints(run_dir: str, iters: Sequence[int]) -> None:
    """Remove the curve checkpoints of ``iters`` that exist."""
    for it in iters:
        path = checkpoint_for(run_dir, it)
        if os.path.exists(path):
            os.remove(path)


def run_one(spec_path: str) -> int:
    """Train and evaluate one run described by ``spec_path``; write its result JSON."""
    import torch
    from detectron2.data import DatasetCatalog
    from detectron2.engine import HookBase

    with open(spec_path) as f:
        spec = json.load(f)
    cfg = setup_run(spec)
    fit_name, holdout_name = fit_holdout_names(spec["train_dataset"])
    fit_ids = [d["image_id"] for d in DatasetCatalog.get(fit_name)]
    holdout_ids = [d["image_id"] for d in DatasetCatalog.get(holdout_name)]

    class TrainClock(HookBase):
        """Training wall time, from before the first iteration to after the last one
        (checkpoint saves included, the final evaluation excluded)."""

        start = end = None
        iterations = 0

        def before_train(self):
            self.start = time.perf_counter()

        def after_step(self):
            self.iterations = self.trainer.iter + 1 - self.trainer.start_iter
            self.end = time.perf_counter()

    clock = TrainClock()
    trainer = build_trainer(cfg)
    trainer.register_hooks([clock])
    trainer.resume_or_load(resume=False)
    status, error = "ok", None
    try:
        trainer.train()
    except FloatingPointError as e:  # the loss became NaN/inf: the learning rate diverged
        status, error = "diverged", str(e).splitlines()[0][:500]
    after_train = time.perf_counter()
    train_seconds = (clock.end or after_train) - (clock.start or after_train)
    res: Dict[str, Any] = {}
    if status == "ok":  # a diverged model is not evaluated
        res = eval_results(trainer.test(cfg, trainer.model), cfg.DATASETS.TEST, evaluated_tasks(cfg))
    after_eval = time.perf_counter()
    num_val = len(DatasetCatalog.get(spec["val_dataset"]))
    eval_images = num_val + (len(holdout_ids) if spec["eval_holdout"] else 0)
    try:
        losses = float(trainer.storage.history("total_loss").median(20))
    except KeyError:  # diverged before the first logged loss
        losses = None
    result = dict(
        spec,
        status=status,
        error=error,
        holdout=res.get(holdout_name) if spec["eval_holdout"] else None,
        holdout_box_AP=finite((res.get(holdout_name) or {}).get("bbox", {}).get("AP")),
        val=res.get(spec["val_dataset"]),
        iterations=clock.iterations,
        train_seconds=train_seconds,
        seconds_per_iter=train_seconds / clock.iterations if clock.iterations else None,
        eval_seconds=(after_eval - clock.end) if status == "ok" and clock.end else 0.0,
        eval_images=eval_images if status == "ok" else 0,
        final_total_loss_median20=losses,
        num_fit_images=len(fit_ids),
        num_holdout_images=len(holdout_ids),
        num_val_images=num_val,
        holdout_image_ids=holdout_ids,
        curve=[],
        curve_complete=False,
        curve_eval_seconds=0.0,
        curve_eval_images=0,
        machine=machine_info(),
        versions=versions(),
        ims_per_batch=cfg.SOLVER.IMS_PER_BATCH,
    )
    run_dir = spec["run_dir"]
    # The last periodic checkpoint is model_final.pth again.
    last = checkpoint_for(run_dir, spec["max_iter"])
    if os.path.exists(last) and os.path.exists(os.path.join(run_dir, "model_final.pth")):
        os.remove(last)
    if status == "ok":
        result["curve"] = [curve_point(spec["max_iter"], result["val"] or {})]
        result["curve_complete"] = len(spec["curve_iters"]) == 1
        if spec["curve_in_run"] and not result["curve_complete"]:
            evaluate_curve(cfg, spec, result)
            delete_curve_checkpoints(run_dir, spec["curve_iters"][:-1])
    else:
        delete_curve_checkpoints(run_dir, spec["curve_iters"][:-1])
    result["wall_seconds"] = since_launch()
    result["torch_threads"] = torch.get_num_threads()
    write_json(spec["result"], result)
    print(f"compare_to_detectron2: wrote {spec['result']} ({status})", flush=True)
    return 0


def curve_one(result_path: str) -> int:
    """Evaluate the intermediate checkpoints of a finished run on val (its learning curve)
    and rewrite its result JSON."""
    result = read_json(result_path)
    if result is None:
        raise FileNotFoundError(result_path)
    cfg = setup_run(result)
    evaluate_curve(cfg, result, result)
    result["curve_wall_seconds"] = since_launch()
    write_json(result_path, result)
    delete_curve_checkpoints(result["run_dir"], result["curve_iters"][:-1])
    print(f"compare_to_detectron2: curve of {result_path} done", flush=True)
    return 0
