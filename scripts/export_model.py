#!/usr/bin/env python
"""Export an RS model (or any config RSTrainer builds) to TorchScript or ONNX, then check
the exported model against the eager one (docs/deployment.md).

Like detectron2's ``tools/deploy/export_model.py``::

    python scripts/export_model.py --config-file configs/Synthetic/rs_mask_rcnn_R_18_FPN.yaml \\
        --export-method tracing --format torchscript --output ./output/export \\
        MODEL.WEIGHTS output/rs_mask_rcnn_R_18_FPN_synthetic/model_final.pth

The model is built as ``train_net.py`` builds it (``add_rs_config``, ``RSTrainer.build_model``:
the sparse CPU ROIAlign included, which steps aside for torchvision's kernel while the
model is exported). ``--export-method tracing`` traces detectron2's ``TracingAdapter`` on the
first sample image (R-CNNs: ``model.inference(..., do_postprocess=False)``, i.e. boxes in
the input's resolution and 28 x 28 RoI masks; one-stage models: their ``forward``);
``scripting`` (TorchScript only) runs ``scripting_with_instances``. The exported file is
written to ``--output`` (``model.ts`` or ``model.onnx``), loaded back and run on every
sample image (for ONNX, with onnxruntime when it is installed, on the images of the traced
size); the largest absolute difference to the eager model is printed, and the script exits
with status 1 when it exceeds ``--atol`` or the detections differ in number or class.

Sample images: ``--sample-image`` files (resized as ``DefaultPredictor`` does), else the
first ``--num-images`` images of ``DATASETS.TEST[0]``.
"""
import argparse
import os
import sys
from typing import Dict, List, Optional, Sequence

import torch

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import CfgNode, get_cfg
from detectron2.data import build_detection_test_loader, detection_utils
from detectron2.data import transforms as T
from detectron2.export import TracingAdapter, scripting_with_instances
from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.structures import Boxes, Instances
from detectron2.utils.testing import convert_scripted_instances

import rs_detectron2.config  # noqa: F401  (registers the RS heads, datasets and weights)
from rs_detectron2 import add_rs_config
from rs_detectron2.data import register_rs_synthetic_datasets
from rs_detectron2.engine import RSTrainer, fall_back_to_cpu

# The fields of Instances that scripting declares (detectron2's export tests use these).
SCRIPTING_FIELDS = {
    "proposal_boxes": Boxes,
    "objectness_logits": torch.Tensor,
    "pred_boxes": Boxes,
    "scores": torch.Tensor,
    "pred_classes": torch.Tensor,
    "pred_masks": torch.Tensor,
    "pred_keypoints": torch.Tensor,
    "pred_keypoint_heatmaps": torch.Tensor,
}
ONNX_OPSET = 17


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Export an RS model to TorchScript or ONNX.")
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--export-method", choices=["tracing", "scripting"], default="tracing")
    parser.add_argument("--format", choices=["torchscript", "onnx"], default="torchscript")
    parser.add_argument("--output", required=True, help="directory of the exported model")
    parser.add_argument("--sample-image", action="append", default=[], metavar="FILE",
                        help="an image to trace with (the first) and to check on; repeat "
                             "for more (default: images of the test set)")
    parser.add_argument("--num-images", type=int, default=2,
                        help="images of DATASETS.TEST[0] to check on without --sample-image")
    parser.add_argument("--atol", type=float, default=1e-3,
                        help="largest accepted |exported - eager| of any output")
    parser.add_argument("opts", nargs=argparse.REMAINDER, default=[],
                        help="config options, e.g. MODEL.WEIGHTS out/model_final.pth")
    return parser


def setup_cfg(args: argparse.Namespace) -> CfgNode:
    cfg = get_cfg()
    add_rs_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    message = fall_back_to_cpu(cfg)
    if message:
        print(message)
    register_rs_synthetic_datasets(cfg)
    cfg.freeze()
    return cfg


def sample_images(cfg: CfgNode, args: argparse.Namespace) -> List[torch.Tensor]:
    """CHW float images in the model's input format, at the test resolution."""
    if args.sample_image:
        resize = T.ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST] * 2, cfg.INPUT.MAX_SIZE_TEST)
        out = []
        for path in args.sample_image:
            image = detection_utils.read_image(path, format=cfg.INPUT.FORMAT)
            image = resize.get_transform(image).apply_image(image)
            out.append(torch.as_tensor(image.astype("float32").transpose(2, 0, 1)))
        return out
    loader = build_detection_test_loader(cfg, cfg.DATASETS.TEST[0])
    out = []
    for batch in loader:
        out.extend(x["image"].float() for x in batch)
        if len(out) >= args.num_images:
            break
    return out[: args.num_images]


def eager_inference(model: torch.nn.Module, *images: torch.Tensor) -> List[Instances]:
    """What the exported model computes: R-CNNs' detections before resizing to the
    original image (RoI masks), one-stage models' detections as ``forward`` returns them."""
    inputs = [{"image": image} for image in images]
    if hasattr(model, "roi_heads"):
        return model.inference(inputs, do_postprocess=False)
    return [out["instances"] for out in model(inputs)]


def canonical_order(instances: Instances) -> Instances:
    """The detections sorted by score (descending), then class, then box: detectron2's
    batched NMS may order exactly tied scores differently in eager mode and in a trace."""
    order = torch.arange(len(instances))
    boxes = instances.pred_boxes.tensor
    for key in (boxes[:, 3], boxes[:, 2], boxes[:, 1], boxes[:, 0],
                instances.pred_classes.float(), -instances.scores):
        order = order[torch.sort(key[order], stable=True)[1]]
    return instances[order]


def compare(expected: Instances, actual: Instances) -> float:
    """Largest |difference| of the float fields (detections in :func:`canonical_order`);
    raises ValueError where the detections differ in number, fields or an integer field
    (classes)."""
    if len(expected) != len(actual):
        raise ValueError(f"{len(actual)} detections, eager {len(expected)}")
    if sorted(expected.get_fields()) != sorted(actual.get_fields()):
        raise ValueError(f"fields {sorted(actual.get_fields())}, eager "
                         f"{sorted(expected.get_fields())}")
    expected, actual = canonical_order(expected), canonical_order(actual)
    worst = 0.0
    for name, value in expected.get_fields().items():
        other = actual.get(name)
        if isinstance(value, Boxes):
            value, other = value.tensor, other.tensor
        if value.shape != other.shape:
            raise ValueError(f"{name}: shape {tuple(other.shape)}, eager {tuple(value.shape)}")
        if value.dtype.is_floating_point:
            if value.numel():
                worst = max(worst, (value - other.to(value.dtype)).abs().max().item())
        elif not torch.equal(value, other):
            raise ValueError(f"{name} differs")
    return worst


def export_tracing(model, image: torch.Tensor, fmt: str, output: str):
    """Trace (TorchScript) or export (ONNX) the TracingAdapter on one image; returns the
    path and a function image -> Instances of the exported model (None where it cannot be
    run here: ONNX without onnxruntime)."""
    adapter = TracingAdapter(model, (image,), eager_inference).eval()
    if fmt == "torchscript":
        path = os.path.join(output, "model.ts")
        with torch.no_grad():
            torch.jit.trace(adapter, (image,)).save(path)
        loaded = torch.jit.load(path)
        return path, lambda x: adapter.outputs_schema(loaded(x))[0]
    path = os.path.join(output, "model.onnx")
    try:
        torch.onnx.export(adapter, (image,), path, opset_version=ONNX_OPSET, dynamo=False)
    except torch.onnx.OnnxExporterError as e:  # e.g. "Module onnx is not installed!"
        raise SystemExit(f"ONNX export failed: {e} (pip install onnx)")
    try:
        import onnxruntime
    except ImportError:
        return path, None
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def run(x):
        outputs = session.run(None, {name: x.numpy()})
        return adapter.outputs_schema([torch.from_numpy(o) for o in outputs])[0]

    return path, run


def export_scripting(model, output: str):
    """scripting_with_instances, saved; returns the path and a function image -> Instances."""
    path = os.path.join(output, "model.ts")
    scripting_with_instances(model, SCRIPTING_FIELDS).save(path)
    loaded = torch.jit.load(path)
    if hasattr(model, "roi_heads"):
        return path, lambda x: convert_scripted_instances(
            loaded.inference([{"image": x}], do_postprocess=False)[0])
    # Scripted one-stage models return the detections before resizing to the input.
    return path, lambda x: detector_postprocess(
        convert_scripted_instances(loaded([{"image": x}])[0]), x.shape[1], x.shape[2])


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, float]:
    """Export, then check; returns the largest |difference| per checked image (by index)."""
    args = get_parser().parse_args(argv)
    if args.export_method == "scripting" and args.format != "torchscript":
        raise SystemExit("--export-method scripting exports TorchScript only "
                         "(ONNX goes through tracing)")
    cfg = setup_cfg(args)
    os.makedirs(args.output, exist_ok=True)
    model = RSTrainer.build_model(cfg)
    DetectionCheckpointer(model).resume_or_load(cfg.MODEL.WEIGHTS, resume=False)
    model.eval()
    images = sample_images(cfg, args)
    if not images:
        raise SystemExit("no sample image")
    if args.export_method == "tracing":
        path, run = export_tracing(model, images[0], args.format, args.output)
        if args.format == "onnx":  # no dynamic axes: only images of the traced size
            images = [x for x in images if x.shape == images[0].shape]
    else:
        path, run = export_scripting(model, args.output)
    print(f"exported {args.export_method} {args.format}: {path}")
    if run is None:
        print("not checked: onnxruntime is not installed")
        return {}
    diffs, failed = {}, False
    for k, image in enumerate(images):
        with torch.no_grad():
            expected = eager_inference(model, image)[0]
            actual = run(image)
        try:
            diffs[str(k)] = compare(expected, actual)
            ok = diffs[str(k)] <= args.atol
            status = f"max abs diff {diffs[str(k)]:.3g}"
        except ValueError as e:
            ok, status = False, str(e)
        failed |= not ok
        print(f"image {k} {tuple(image.shape[1:])}: {len(expected)} detections, {status}"
              f"{'' if ok else '  FAILED'}")
    if failed:
        raise SystemExit(1)
    return diffs


if __name__ == "__main__":
    main(sys.argv[1:])
