#!/usr/bin/env python
"""Run a trained detector on images and write the drawn predictions.

Like detectron2's ``demo/demo.py`` (images only: no webcam, no video)::

    python demo.py --config-file configs/Synthetic/rs_mask_rcnn_R_18_FPN.yaml \\
        --input img1.png img2.png 'dir/*.png' --output out_dir/ \\
        --confidence-threshold 0.5 \\
        MODEL.WEIGHTS output/rs_mask_rcnn_R_18_FPN_synthetic/model_final.pth

``--input`` takes files, quoted globs and folders (their images). ``--output`` is a folder
(created; one image per input, named like the input) or, with exactly one input, an image
file. Without ``--output`` nothing is written (predictions are only counted in the log).
Trailing ``KEY VALUE`` pairs (or ``--opts KEY VALUE ...``) override the config.
"""
import argparse
import glob
import logging
import os
import re
import sys
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np

from detectron2 import model_zoo
from detectron2.config import CfgNode, get_cfg
from detectron2.data import Metadata, MetadataCatalog
from detectron2.data.detection_utils import read_image
from detectron2.engine import DefaultPredictor
from detectron2.utils.logger import setup_logger
from detectron2.utils.visualizer import ColorMode, Visualizer

import rs_detectron2.config  # noqa: F401  (registers the RS heads, datasets and weights)
from rs_detectron2.config import add_rs_config
from rs_detectron2.data import register_rs_synthetic_datasets
from rs_detectron2.engine import fall_back_to_cpu

__all__ = [
    "IMAGE_EXTENSIONS",
    "check_weights",
    "draw_predictions",
    "expand_inputs",
    "get_metadata",
    "get_parser",
    "main",
    "output_paths",
    "parse_args",
    "setup_cfg",
]

logger = logging.getLogger("rs_detectron2.demo")

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")

# A config key such as MODEL.WEIGHTS: tells trailing opts apart from input paths.
_CONFIG_KEY = re.compile(r"^[A-Z][A-Z0-9_]*(\.[A-Z0-9_]+)+$")


def get_parser() -> argparse.ArgumentParser:
    """The command line of this demo (also used by ``benchmarks/side_by_side.py``)."""
    parser = argparse.ArgumentParser(
        description="Draw a detectron2 / RS Loss model's predictions on images. Images "
        "only: unlike detectron2's demo/demo.py there is no --webcam or --video-input.",
        epilog="example:\n  python demo.py --config-file "
        "configs/Synthetic/rs_mask_rcnn_R_18_FPN.yaml \\\n"
        "      --input a.png 'dir/*.png' --output out/ \\\n"
        "      MODEL.WEIGHTS output/rs_mask_rcnn_R_18_FPN_synthetic/model_final.pth",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--config-file",
        required=True,
        metavar="FILE",
        help="config file, or a detectron2 model-zoo config name "
        "(e.g. COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml)",
    )
    parser.add_argument(
        "--input",
        nargs="+",
        required=True,
        help="image files, folders of images, or quoted glob patterns ('dir/*.png')",
    )
    parser.add_argument(
        "--output",
        help="output folder (created; one image per input), or an image file path when "
        "there is exactly one input; without it nothing is written",
    )
    parser.add_argument(
        "--confidence-threshold",
        type=float,
        default=0.5,
        help="minimum score of the drawn instances (sets the models' test score thresholds)",
    )
    parser.add_argument(
        "opts",
        nargs=argparse.REMAINDER,
        help="config overrides as trailing KEY VALUE pairs, e.g. MODEL.WEIGHTS model.pth "
        "(detectron2's '--opts KEY VALUE ...' form also works)",
    )
    return parser


def _split_opts(argv: Sequence[str]) -> Tuple[List[str], List[str]]:
    """Split off detectron2 demo style ``--opts KEY VALUE ...`` (everything after it)."""
    argv = list(argv)
    if "--opts" in argv:
        i = argv.index("--opts")
        return argv[:i], argv[i + 1 :]
    return argv, []


def _move_opts_out_of_inputs(args: argparse.Namespace) -> None:
    """``--input a.png MODEL.WEIGHTS w.pth`` (no option after the inputs): argparse gives
    the KEY VALUE pairs to ``--input``; the first config-key-like token that is not an
    existing file starts the opts."""
    for i, token in enumerate(args.input):
        if _CONFIG_KEY.match(token) and not os.path.exists(token):
            args.opts = list(args.input[i:]) + list(args.opts)
            args.input = args.input[:i]
            return


def parse_args(
    argv: Optional[Sequence[str]] = None, parser: Optional[argparse.ArgumentParser] = None
) -> argparse.Namespace:
    """Parse ``argv`` (default ``sys.argv[1:]``) with ``parser`` (default :func:`get_parser`)."""
    parser = parser or get_parser()
    argv, extra_opts = _split_opts(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.opts = list(args.opts or []) + extra_opts
    if getattr(args, "input", None):
        _move_opts_out_of_inputs(args)
        if not args.input:
            parser.error("--input needs at least one image, folder or glob before the opts")
    if len(args.opts) % 2:
        parser.error(f"config overrides must be KEY VALUE pairs, got {args.opts}")
    return args


def _config_path(config_file: str) -> str:
    """``config_file`` itself if it exists, else the detectron2 model-zoo config of that name."""
    if os.path.isfile(config_file):
        return config_file
    if os.path.isabs(config_file) or config_file.startswith("."):
        raise FileNotFoundError(f"Config file not found: {config_file!r}")
    try:
        return model_zoo.get_config_file(config_file)
    except RuntimeError:
        raise FileNotFoundError(
            f"Config file not found: {config_file!r} (neither a file nor a detectron2 "
            "model-zoo config name)"
        ) from None


def setup_cfg(config_file: str, opts: Sequence[str], confidence_threshold: float) -> CfgNode:
    """The frozen config of a demo run.

    ``get_cfg()`` + :func:`~rs_detectron2.config.add_rs_config`, merge ``config_file`` and
    ``opts``, set the test score thresholds of all meta-architectures to
    ``confidence_threshold`` (as detectron2's demo does), fall back to the CPU when the
    config asks for CUDA and none is available, and register the built-in synthetic
    datasets with the config's sizes (so their class names are known; nothing is generated).
    """
    cfg = get_cfg()
    add_rs_config(cfg)
    cfg.merge_from_file(_config_path(config_file))
    cfg.merge_from_list(list(opts))
    cfg.MODEL.RETINANET.SCORE_THRESH_TEST = confidence_threshold
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = confidence_threshold
    cfg.MODEL.PANOPTIC_FPN.COMBINE.INSTANCES_CONFIDENCE_THRESH = confidence_threshold
    message = fall_back_to_cpu(cfg)
    if message is not None:
        logger.warning(message)
    register_rs_synthetic_datasets(cfg)
    cfg.freeze()
    return cfg


def check_weights(weights: str) -> None:
    """Raise ``FileNotFoundError`` when ``weights`` is a local path that does not exist.

    "" means random weights (a warning); URLs such as ``detectron2://...`` are left to
    detectron2's checkpointer, which downloads them.
    """
    if not weights:
        logger.warning("MODEL.WEIGHTS is empty: the model has RANDOM weights (pass "
                       "MODEL.WEIGHTS path/to/model_final.pth to draw a trained model).")
        return
    if "://" in weights:
        if "ImageNetPretrained" in weights:
            logger.warning(f"MODEL.WEIGHTS is {weights}, an ImageNet backbone, not a trained "
                           "detector: pass MODEL.WEIGHTS path/to/model_final.pth.")
        return
    if not os.path.isfile(weights):
        raise FileNotFoundError(
            f"MODEL.WEIGHTS file not found: {weights!r} (pass the checkpoint of a trained "
            "model, e.g. MODEL.WEIGHTS output/<run>/model_final.pth)"
        )


def expand_inputs(patterns: Sequence[str]) -> List[str]:
    """The image files of ``patterns``: files as given, folders' images (sorted), globs'
    matching files (sorted); duplicates dropped, order kept.

    Raises ``FileNotFoundError`` naming every pattern that matches no file.
    """
    files: List[str] = []
    unmatched: List[str] = []
    for pattern in patterns:
        path = os.path.expanduser(pattern)
        if os.path.isdir(path):
            matched = sorted(
                os.path.join(path, name)
                for name in os.listdir(path)
                if name.lower().endswith(IMAGE_EXTENSIONS)
                and os.path.isfile(os.path.join(path, name))
            )
        elif glob.has_magic(path):
            matched = sorted(p for p in glob.glob(path) if os.path.isfile(p))
        else:
            matched = [path] if os.path.isfile(path) else []
        if not matched:
            unmatched.append(pattern)
        files.extend(matched)
    if unmatched:
        raise FileNotFoundError(
            "No input image matches " + ", ".join(repr(p) for p in unmatched)
            + " (give image files, folders of images or quoted globs such as 'dir/*.png')"
        )
    return list(dict.fromkeys(files))


def output_paths(inputs: Sequence[str], output: str) -> List[str]:
    """Where the drawing of each input goes.

    ``output`` is a file when it has an image extension and is not an existing folder
    (then there must be exactly one input); otherwise it is a folder, created here, and
    each drawing is named like its input (``name_1.png``, ... when two inputs share a name).
    """
    is_file = output.lower().endswith(IMAGE_EXTENSIONS) and not os.path.isdir(output)
    if is_file:
        if len(inputs) != 1:
            raise ValueError(
                f"--output {output!r} is a file, but there are {len(inputs)} inputs: give a "
                "folder to write one image per input"
            )
        parent = os.path.dirname(os.path.abspath(output))
        os.makedirs(parent, exist_ok=True)
        return [output]
    if os.path.exists(output) and not os.path.isdir(output):
        raise ValueError(f"--output {output!r} exists and is not a folder")
    os.makedirs(output, exist_ok=True)
    paths: List[str] = []
    used = set()
    for path in inputs:
        stem, ext = os.path.splitext(os.path.basename(path))
        name, k = stem + ext, 0
        while name in used:
            k += 1
            name = f"{stem}_{k}{ext}"
        used.add(name)
        paths.append(os.path.join(output, name))
    return paths


def get_metadata(cfg: CfgNode) -> Metadata:
    """Metadata of ``cfg.DATASETS.TEST[0]`` (class names, colours), as detectron2's demo."""
    return MetadataCatalog.get(cfg.DATASETS.TEST[0] if len(cfg.DATASETS.TEST) else "__unused")


def draw_predictions(
    image_bgr: np.ndarray,
    predictions: Dict[str, Any],
    metadata: Metadata,
    instance_mode: ColorMode = ColorMode.IMAGE,
) -> np.ndarray:
    """Draw a model's ``predictions`` on ``image_bgr`` (H, W, 3) with detectron2's
    :class:`Visualizer`; returns an RGB uint8 image of the same size."""
    visualizer = Visualizer(image_bgr[:, :, ::-1], metadata, instance_mode=instance_mode)
    if "panoptic_seg" in predictions:
        panoptic_seg, segments_info = predictions["panoptic_seg"]
        out = visualizer.draw_panoptic_seg_predictions(panoptic_seg.to("cpu"), segments_info)
    elif "sem_seg" in predictions and "instances" not in predictions:
        out = visualizer.draw_sem_seg(predictions["sem_seg"].argmax(dim=0).to("cpu"))
    else:
        out = visualizer.draw_instance_predictions(predictions["instances"].to("cpu"))
    return out.get_image()


def write_image(path: str, image_rgb: np.ndarray) -> None:
    """Write an RGB image; raise ``OSError`` if OpenCV cannot."""
    if not cv2.imwrite(path, np.ascontiguousarray(image_rgb[:, :, ::-1])):
        raise OSError(f"Could not write {path!r}")


def main(argv: Optional[Sequence[str]] = None) -> List[str]:
    """Run the demo with ``argv`` (default ``sys.argv[1:]``); returns the written paths."""
    args = parse_args(argv)
    setup_logger(name="fvcore")
    setup_logger(name="rs_detectron2")
    setup_logger().info(f"Arguments: {args}")

    inputs = expand_inputs(args.input)
    outputs = output_paths(inputs, args.output) if args.output else [None] * len(inputs)
    cfg = setup_cfg(args.config_file, args.opts, args.confidence_threshold)
    check_weights(cfg.MODEL.WEIGHTS)

    predictor = DefaultPredictor(cfg)
    metadata = get_metadata(cfg)
    written: List[str] = []
    for path, out_path in zip(inputs, outputs):
        image = read_image(path, format="BGR")
        start = time.perf_counter()
        predictions = predictor(image)
        seconds = time.perf_counter() - start
        count = len(predictions["instances"]) if "instances" in predictions else 0
        logger.info(f"{path}: {count} instances in {seconds:.2f}s")
        if out_path is not None:
            write_image(out_path, draw_predictions(image, predictions, metadata))
            written.append(out_path)
    if written:
        logger.info(f"Wrote {len(written)} image(s) to {args.output}")
    return written


def cli(run=main) -> None:
    """Run ``run`` (default :func:`main`) from the command line: a missing input, weights
    or config file, or a bad ``--output``, ends with a one-line error, not a traceback."""
    try:
        run()
    except (FileNotFoundError, ValueError) as e:
        sys.exit(f"{os.path.basename(sys.argv[0])}: error: {e}")


if __name__ == "__main__":
    cli()  # pragma: no cover
