#!/usr/bin/env python
"""Convert a torchvision ResNet checkpoint into a detectron2 checkpoint (.pkl).

    # torchvision's ImageNet ResNet-50 (the published RS-ATSS / RS-PAA backbone), fetched
    # yourself from https://download.pytorch.org/models/resnet50-0676ba61.pth
    python tools/convert_torchvision_to_d2.py resnet50-0676ba61.pth torchvision-R-50.pkl

The input is a torchvision ResNet/ResNeXt ``state_dict`` saved with ``torch.save`` (or a
dict holding it under "model" or "state_dict"). The output is what detectron2's
``DetectionCheckpointer`` reads as a pretrained backbone: a pickle of
``{"model": {name: numpy array}, "__author__": "torchvision", "matching_heuristics": True}``
with detectron2's ResNet names (``stem.conv1``, ``res2.0.conv1.norm``, ``res2.0.shortcut``,
...; see ``rs_detectron2.modeling.backbone.convert_torchvision_resnet_state_dict``); the
ImageNet classifier ``fc`` is dropped. Use it with
``configs/COCO-Detection/rs_atss_R_50_FPN_1x_torchvision.yaml`` (RGB input, ImageNet
mean/std, stride in the 3x3 conv): ``MODEL.WEIGHTS torchvision-R-50.pkl``.
"""
import argparse
import os
import pickle
import sys
from typing import Dict, List, Optional

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from rs_detectron2.modeling.backbone.torchvision_resnet import (  # noqa: E402
    convert_torchvision_resnet_state_dict,
)


def load_torchvision_state_dict(path: str) -> Dict[str, torch.Tensor]:
    """The state_dict in a torchvision checkpoint (bare, or under "model"/"state_dict")."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    for wrapper in ("model", "state_dict"):
        if isinstance(checkpoint, dict) and isinstance(checkpoint.get(wrapper), dict):
            checkpoint = checkpoint[wrapper]
    return checkpoint


def convert(source: str, output: str) -> Dict[str, np.ndarray]:
    """Convert the torchvision checkpoint ``source``, write the detectron2 .pkl ``output``
    and return its ``"model"`` dict."""
    state_dict = convert_torchvision_resnet_state_dict(load_torchvision_state_dict(source))
    model = {k: v.detach().cpu().numpy() for k, v in state_dict.items()}
    folder = os.path.dirname(os.path.abspath(output))
    os.makedirs(folder, exist_ok=True)
    with open(output, "wb") as f:
        pickle.dump(
            {"model": model, "__author__": "torchvision", "matching_heuristics": True}, f
        )
    return model


def main(argv: Optional[List[str]] = None) -> str:
    """Parse the arguments, convert, return the output path."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        epilog=__doc__.split("\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("source", help="torchvision ResNet checkpoint (.pth state_dict)")
    parser.add_argument("output", help="detectron2 checkpoint to write (.pkl)")
    args = parser.parse_args(argv)
    model = convert(args.source, args.output)
    print(f"converted {len(model)} tensors of {args.source} to {args.output}", flush=True)
    return args.output


if __name__ == "__main__":
    main()
