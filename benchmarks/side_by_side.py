#!/usr/bin/env python
"""Two models' predictions on the same images, side by side, in one PNG.

One row per input image (left model | right model), drawn with detectron2's Visualizer,
the column titles on top and each panel's instance count below it::

    python benchmarks/side_by_side.py \\
        --left configs/Synthetic/rs_mask_rcnn_R_18_FPN.yaml \\
               output/rs_mask_rcnn_R_18_FPN_synthetic/model_final.pth \\
        --right configs/Synthetic/mask_rcnn_R_18_FPN.yaml \\
                output/mask_rcnn_R_18_FPN_synthetic/model_final.pth \\
        --input 'datasets/rs_synthetic/*/val/images/val_00000[0-3].png' --output fig.png \\
        --titles "RS-Mask R-CNN" "Mask R-CNN" --confidence-threshold 0.5

Trailing ``KEY VALUE`` pairs override both configs (e.g. ``MODEL.DEVICE cpu``). A WEIGHTS
of "" means random weights. Config loading, input globs, weight checks and drawing are
``demo.py``'s.
"""
import argparse
import logging
import os
import sys
from typing import List, Optional, Sequence, Tuple

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import demo  # noqa: E402

from detectron2.data.detection_utils import read_image  # noqa: E402
from detectron2.engine import DefaultPredictor  # noqa: E402
from detectron2.utils.logger import setup_logger  # noqa: E402

logger = logging.getLogger("rs_detectron2.side_by_side")

MIN_PANEL_PX = 360  # narrower images are shown enlarged


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--left", nargs=2, required=True, metavar=("CONFIG", "WEIGHTS"),
                        help="config file (or detectron2 model-zoo name) and checkpoint of "
                        "the left column; WEIGHTS '' = random weights")
    parser.add_argument("--right", nargs=2, required=True, metavar=("CONFIG", "WEIGHTS"),
                        help="the same for the right column")
    parser.add_argument("--input", nargs="+", required=True,
                        help="image files, folders of images, or quoted glob patterns")
    parser.add_argument("--output", required=True, help="the PNG to write")
    parser.add_argument("--titles", nargs=2, metavar=("LEFT", "RIGHT"),
                        help="column titles (default: the config file names)")
    parser.add_argument("--confidence-threshold", type=float, default=0.5,
                        help="minimum score of the drawn instances, both models")
    parser.add_argument("--dpi", type=int, default=100, help="resolution of the PNG")
    parser.add_argument("opts", nargs=argparse.REMAINDER,
                        help="config overrides for BOTH models, as trailing KEY VALUE pairs")
    return parser


def _default_title(config_file: str) -> str:
    return os.path.splitext(os.path.basename(config_file))[0]


def render_figure(
    rows: Sequence[Tuple[np.ndarray, np.ndarray]],
    titles: Sequence[str],
    row_labels: Sequence[str],
    panel_labels: Sequence[Tuple[str, str]],
    output: str,
    dpi: int = 100,
) -> None:
    """Write one PNG: row i shows ``rows[i]`` (two RGB images) labelled ``row_labels[i]``
    on the left and ``panel_labels[i]`` below; ``titles`` above the two columns."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    # Panels at their own pixel size (the widest sets the column width; small images are
    # enlarged to MIN_PANEL_PX so that titles and labels fit), plus margins.
    width_px = max(max(left.shape[1], right.shape[1]) for left, right in rows)
    ratios = [max(left.shape[0], right.shape[0]) / width_px for left, right in rows]
    panel_w = max(width_px, MIN_PANEL_PX) / dpi
    fig = Figure(figsize=(2 * panel_w + 0.6, panel_w * sum(ratios) + 0.45 * len(rows) + 0.5),
                 dpi=dpi)
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(rows), 2, squeeze=False, gridspec_kw=dict(height_ratios=ratios))
    for i, (images, labels) in enumerate(zip(rows, panel_labels)):
        for j in range(2):
            ax = axes[i, j]
            ax.imshow(images[j], interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            ax.set_xlabel(labels[j], fontsize=9)
            if i == 0:
                ax.set_title(titles[j], fontsize=13, fontweight="bold")
        axes[i, 0].set_ylabel(row_labels[i], fontsize=9)
    fig.tight_layout()
    fig.savefig(output, format="png", dpi=dpi)


def main(argv: Optional[Sequence[str]] = None) -> str:
    """Run both models on the inputs and write the figure; returns its path."""
    args = demo.parse_args(argv, get_parser())
    setup_logger(name="fvcore")
    setup_logger(name="rs_detectron2")
    setup_logger().info(f"Arguments: {args}")
    if os.path.isdir(args.output):
        raise ValueError(f"--output {args.output!r} is a folder: give the PNG file to write")

    inputs = demo.expand_inputs(args.input)
    columns = []
    for config_file, weights in (args.left, args.right):
        cfg = demo.setup_cfg(config_file, list(args.opts) + ["MODEL.WEIGHTS", weights],
                             args.confidence_threshold)
        demo.check_weights(cfg.MODEL.WEIGHTS)
        columns.append((DefaultPredictor(cfg), demo.get_metadata(cfg)))
    titles = args.titles or [_default_title(args.left[0]), _default_title(args.right[0])]

    rows: List[Tuple[np.ndarray, np.ndarray]] = []
    panel_labels: List[Tuple[str, str]] = []
    for path in inputs:
        image = read_image(path, format="BGR")
        drawn, labels = [], []
        for predictor, metadata in columns:
            predictions = predictor(image)
            count = len(predictions["instances"]) if "instances" in predictions else 0
            drawn.append(demo.draw_predictions(image, predictions, metadata))
            labels.append(f"{count} instances, score >= {args.confidence_threshold:g}")
        rows.append((drawn[0], drawn[1]))
        panel_labels.append((labels[0], labels[1]))
        logger.info(f"{path}: {labels[0]} (left), {labels[1]} (right)")

    parent = os.path.dirname(os.path.abspath(args.output))
    os.makedirs(parent, exist_ok=True)
    render_figure(rows, titles, [os.path.basename(p) for p in inputs], panel_labels,
                  args.output, args.dpi)
    logger.info(f"Wrote {args.output} ({len(rows)} rows)")
    return args.output


if __name__ == "__main__":
    demo.cli(main)  # pragma: no cover
