"""Pretrain the narrow R-18 as an image classifier and write it as a detectron2 checkpoint.

Nothing can be downloaded here, so the project makes its own "ImageNet" backbone: the
ResNet of the synthetic configs (:func:`~rs_detectron2.modeling.backbone.build_small_resnet`
from the same config keys), global average pooling and a linear classifier on res5,
trained with BatchNorm in train mode on the built-in classification set
(:mod:`rs_detectron2.data.synthetic_classification`, whose classes are none of the detection
datasets'). Input is normalised exactly as detectron2's detectors do it
(``MODEL.PIXEL_MEAN`` / ``PIXEL_STD``, channels in ``INPUT.FORMAT``, pixels 0-255).

The checkpoint's ``"model"`` holds the ResNet only, under ``backbone.bottom_up.`` (the key
prefix of both FPN backbones, R-CNN and one-stage), so that ``DetectionCheckpointer`` loads it
into a detector with only the FPN and heads missing, with ``RESNETS.NORM`` "BN" or
"FrozenBN" (the BatchNorm statistics are stored; ``num_batches_tracked`` is not, which
FrozenBN has no place for). ``"rs_pretraining"`` records the held-out top-1, the recipe and
the version.
"""
import dataclasses
import math
import os
import time
from typing import Any, Dict, Iterator, Optional

import numpy as np
import torch
from fvcore.nn.precise_bn import update_bn_stats
from torch import nn
from torch.nn import functional as F
from tqdm import tqdm

from detectron2.config import CfgNode
from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone.resnet import BasicBlock

from .data.synthetic_classification import (
    CLASSIFICATION_CLASSES,
    CLASSIFICATION_GENERATOR_VERSION,
    generate_classification_split,
)
from .modeling.backbone.small_resnet import build_small_resnet

__all__ = [
    "BACKBONE_PREFIX",
    "DEFAULT_RECIPE",
    "PRETRAINING_VERSION",
    "PretrainRecipe",
    "describe",
    "pretrain_small_resnet",
    "save_checkpoint",
]

# Bump whenever the recipe's defaults or the training code change what is trained: it is
# part of the cache path of the rs_pretrained:// weights (rs_detectron2.pretrained_weights).
PRETRAINING_VERSION = 1

# Where detectron2's FPN backbones (build_small_resnet_fpn_backbone and
# build_retinanet_small_resnet_fpn_backbone) keep the ResNet in a detector's state dict.
BACKBONE_PREFIX = "backbone.bottom_up."

# The builders whose bottom-up network build_small_resnet makes.
_SMALL_RESNET_BACKBONES = ("build_small_resnet_fpn_backbone",
                           "build_retinanet_small_resnet_fpn_backbone")
_BATCHNORMS = ("BN", "SyncBN", "FrozenBN")


@dataclasses.dataclass(frozen=True)
class PretrainRecipe:
    """The pretraining recipe. The defaults are the rs_pretrained:// weights' (held-out top-1
    89.7% on 47 classes, a few CPU minutes); tests shrink the sizes."""

    num_train: int = 48000  # training images (balanced over the 47 classes)
    num_val: int = 4700  # held-out images for top-1
    image_size: int = 64
    iterations: int = 1600
    batch_size: int = 128
    base_lr: float = 0.2  # SGD, Nesterov momentum, cosine to 0 after a linear warm-up
    momentum: float = 0.9
    weight_decay: float = 5e-4  # not on the norms' affine parameters nor the biases
    warmup_iters: int = 100
    label_smoothing: float = 0.1
    precise_bn_batches: int = 20  # re-estimate the BatchNorm statistics of the final weights
    seed: int = 0


DEFAULT_RECIPE = PretrainRecipe()


class _Classifier(nn.Module):
    """ResNet -> global average pooling of res5 -> linear, on raw 0-255 images."""

    def __init__(self, resnet: nn.Module, num_classes: int, cfg: CfgNode):
        super().__init__()
        self.resnet = resnet
        self.linear = nn.Linear(resnet.output_shape()["res5"].channels, num_classes)
        self.register_buffer("pixel_mean", torch.tensor(cfg.MODEL.PIXEL_MEAN).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(cfg.MODEL.PIXEL_STD).view(-1, 1, 1), False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = (images - self.pixel_mean) / self.pixel_std
        return self.linear(self.resnet(x)["res5"].mean(dim=(2, 3)))


def _pretraining_cfg(cfg: CfgNode) -> CfgNode:
    """``cfg``'s backbone keys for pretraining: the same widths, BatchNorm in train mode,
    nothing frozen, res5 out."""
    name = cfg.MODEL.BACKBONE.NAME
    if name not in _SMALL_RESNET_BACKBONES:
        raise ValueError(f"pretraining builds the backbone of {_SMALL_RESNET_BACKBONES}; "
                         f"the config's MODEL.BACKBONE.NAME is {name!r}")
    if cfg.MODEL.RESNETS.NORM not in _BATCHNORMS:
        raise ValueError(f"pretraining stores BatchNorm statistics, so MODEL.RESNETS.NORM must "
                         f"be one of {_BATCHNORMS}; got {cfg.MODEL.RESNETS.NORM!r}")
    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.RESNETS.NORM = "BN"
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    return cfg


def _to_input(images: np.ndarray, input_format: str) -> torch.Tensor:
    """uint8 (N, H, W, 3) BGR images -> float (N, 3, H, W) in ``input_format``, 0-255."""
    if input_format not in ("BGR", "RGB"):
        raise ValueError(f"pretraining supports INPUT.FORMAT BGR or RGB, got {input_format!r}")
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float()
    return x.flip(1) if input_format == "RGB" else x


def _lr(recipe: PretrainRecipe, it: int) -> float:
    warmup = min(1.0, (it + 1) / max(1, recipe.warmup_iters))
    return recipe.base_lr * warmup * 0.5 * (1.0 + math.cos(math.pi * it / recipe.iterations))


def _param_groups(model: nn.Module, weight_decay: float):
    decay, no_decay = [], []
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            is_norm = isinstance(module, (nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm))
            (no_decay if is_norm or name == "bias" else decay).append(p)
    return [dict(params=decay, weight_decay=weight_decay), dict(params=no_decay, weight_decay=0.0)]


def _batches(num: int, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """Indices of shuffled batches, epoch after epoch (the last partial batch dropped)."""
    batch_size = min(batch_size, num)
    while True:
        perm = torch.randperm(num, generator=generator)
        for start in range(0, num - batch_size + 1, batch_size):
            yield perm[start:start + batch_size]


@torch.no_grad()
def _top1(model: nn.Module, images: np.ndarray, labels: np.ndarray, input_format: str) -> float:
    model.eval()
    correct = 0
    for start in range(0, len(images), 256):
        logits = model(_to_input(images[start:start + 256], input_format))
        correct += int((logits.argmax(1).numpy() == labels[start:start + 256]).sum())
    return correct / len(images)


def pretrain_small_resnet(cfg: CfgNode, recipe: Optional[PretrainRecipe] = None,
                          progress: bool = True) -> Dict[str, Any]:
    """Pretrain the ResNet of ``cfg`` (a small-ResNet detector config with
    ``add_rs_config``'s keys) on the built-in classification set with ``recipe`` (default:
    :data:`DEFAULT_RECIPE`).

    Returns the checkpoint to write with :func:`save_checkpoint`: ``"model"`` (the ResNet
    under :data:`BACKBONE_PREFIX`) and ``"rs_pretraining"`` (held-out ``top1``, the recipe,
    the data, the backbone's keys, the input normalisation and the versions).
    """
    start = time.perf_counter()
    recipe = recipe if recipe is not None else DEFAULT_RECIPE
    cfg = _pretraining_cfg(cfg)
    torch.manual_seed(recipe.seed)
    fmt = cfg.INPUT.FORMAT
    train_images, train_labels = generate_classification_split(
        recipe.num_train, recipe.image_size, recipe.seed, "train", progress=progress)
    val_images, val_labels = generate_classification_split(
        recipe.num_val, recipe.image_size, recipe.seed, "val", progress=progress)
    model = _Classifier(build_small_resnet(cfg, ShapeSpec(channels=3)),
                        len(CLASSIFICATION_CLASSES), cfg)
    for block in model.resnet.modules():  # each residual branch starts at zero: trains sooner
        if isinstance(block, BasicBlock):
            nn.init.zeros_(block.conv2.norm.weight)
    optimizer = torch.optim.SGD(_param_groups(model, recipe.weight_decay), lr=recipe.base_lr,
                                momentum=recipe.momentum, nesterov=True)
    generator = torch.Generator().manual_seed(recipe.seed)
    batches = _batches(recipe.num_train, recipe.batch_size, generator)
    train_labels_t = torch.from_numpy(train_labels)

    model.train()
    bar = tqdm(range(recipe.iterations), desc="Pretraining the backbone", unit="it",
               dynamic_ncols=True, disable=not progress)
    for it in bar:
        idx = next(batches)
        for group in optimizer.param_groups:
            group["lr"] = _lr(recipe, it)
        logits = model(_to_input(train_images[idx.numpy()], fmt))
        loss = F.cross_entropy(logits, train_labels_t[idx], label_smoothing=recipe.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if not math.isfinite(loss.item()):
            raise FloatingPointError(f"pretraining diverged at iteration {it} (loss {loss.item()})")
        if it % 20 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    # Statistics of the final weights (FrozenBN uses them as they are).
    update_bn_stats(model, (_to_input(train_images[next(batches).numpy()], fmt)
                            for _ in range(recipe.precise_bn_batches)), recipe.precise_bn_batches)
    top1 = _top1(model, val_images, val_labels, fmt)

    state = {BACKBONE_PREFIX + k: v.detach().clone() for k, v in model.resnet.state_dict().items()
             if not k.endswith("num_batches_tracked")}
    from . import __version__

    info = dict(
        version=PRETRAINING_VERSION,
        top1=round(top1, 4),
        recipe=dataclasses.asdict(recipe),
        data=dict(name="rs_synthetic_classification", version=CLASSIFICATION_GENERATOR_VERSION,
                  num_classes=len(CLASSIFICATION_CLASSES)),
        backbone=dict(builder="build_small_resnet", depth=cfg.MODEL.RESNETS.DEPTH,
                      res2_out_channels=cfg.MODEL.RESNETS.RES2_OUT_CHANNELS,
                      stem_out_channels=cfg.MODEL.RESNETS.STEM_OUT_CHANNELS, norm="BN"),
        input=dict(pixel_mean=list(cfg.MODEL.PIXEL_MEAN), pixel_std=list(cfg.MODEL.PIXEL_STD),
                   format=fmt),
        wall_time_s=round(time.perf_counter() - start, 1),
        rs_detectron2=__version__,
        torch=str(torch.__version__),
    )
    # A plain dict (no torch _metadata): BatchNorm then fills in num_batches_tracked itself.
    return {"model": dict(state), "rs_pretraining": info}


def save_checkpoint(checkpoint: Dict[str, Any], path: str) -> str:
    """Write ``checkpoint`` to ``path`` atomically (temporary file, then rename): a killed
    run leaves no partial checkpoint. Returns ``path``."""
    path = os.path.abspath(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        torch.save(checkpoint, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def describe(checkpoint: Dict[str, Any]) -> str:
    """What a checkpoint of :func:`pretrain_small_resnet` holds, in one line: backbone,
    data, held-out top-1."""
    info = checkpoint["rs_pretraining"]
    b, r = info["backbone"], info["recipe"]
    return (f"R-{b['depth']} (res2 {b['res2_out_channels']}, stem {b['stem_out_channels']} "
            f"channels) pretrained on rs_synthetic_classification "
            f"({info['data']['num_classes']} classes, {r['num_train']} images of "
            f"{r['image_size']} px, {r['iterations']} iterations): held-out top-1 "
            f"{100 * info['top1']:.1f}% ({r['num_val']} images)")
