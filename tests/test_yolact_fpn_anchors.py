"""YOLACT's building blocks: the bilinear FPN (P3-P7, P6/P7 from C5 without a ReLU, no input
padding) and the anchors on fractional strides (550 / feature side), against the published
formulas (mmdetection's FPN and AnchorGenerator in the RS-YOLACT config)."""
import math
import warnings
from typing import Dict, List, Sequence, Tuple

import pytest
import torch
from torch import nn

from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, build_backbone
from detectron2.modeling.anchor_generator import (
    ANCHOR_GENERATOR_REGISTRY,
    DefaultAnchorGenerator,
    build_anchor_generator,
)
from detectron2.modeling.backbone import FPN, Backbone

from rs_detectron2.config import add_rs_config
from rs_detectron2.modeling import FractionalStrideAnchorGenerator
from rs_detectron2.modeling.backbone import LastLevelP6P7FromC5NoReLU, YolactFPN

LEVELS = ("p3", "p4", "p5", "p6", "p7")
SIDES_550 = (69, 35, 18, 9, 5)
SIDES_192 = (24, 12, 6, 3, 2)
# The published anchors: base_sizes 8-128 x octave_base_scale 3 (scales_per_octave 1).
BASE_SIZES = (8, 16, 32, 64, 128)
OCTAVE_BASE_SCALE = 3.0
RATIOS = (0.5, 1.0, 2.0)
SIZES = [[b * OCTAVE_BASE_SCALE] for b in BASE_SIZES]  # detectron2: [[24], [48], ..., [384]]


def yolact_cfg(backbone: str = "build_yolact_small_resnet_fpn_backbone", depth: int = 18):
    """A narrow YOLACT backbone + anchors config (seconds on a CPU at 550)."""
    cfg = get_cfg()
    add_rs_config(cfg)
    cfg.MODEL.BACKBONE.NAME = backbone
    cfg.MODEL.RESNETS.DEPTH = depth
    cfg.MODEL.RESNETS.STEM_OUT_CHANNELS = 4
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 8
    cfg.MODEL.RESNETS.WIDTH_PER_GROUP = 2  # R-50 bottlenecks: 2 channels
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res3", "res4", "res5"]
    cfg.MODEL.FPN.OUT_CHANNELS = 8
    cfg.MODEL.ANCHOR_GENERATOR.NAME = "FractionalStrideAnchorGenerator"
    cfg.MODEL.ANCHOR_GENERATOR.SIZES = SIZES
    cfg.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS = [list(RATIOS)]
    cfg.MODEL.ANCHOR_GENERATOR.OFFSET = 0.5
    return cfg


def build_yolact(cfg) -> Tuple[YolactFPN, FractionalStrideAnchorGenerator]:
    torch.manual_seed(0)
    backbone = build_backbone(cfg).eval()
    shapes = backbone.output_shape()
    return backbone, build_anchor_generator(cfg, [shapes[f] for f in LEVELS])


def cat_anchors(anchors) -> torch.Tensor:
    return torch.cat([b.tensor for b in anchors])


# ------------------------------------------------------------------------------ FPN


class FixedBottomUp(Backbone):
    """A bottom-up 'network' that returns given res3-res5 maps (1 channel)."""

    def __init__(self, features: Dict[str, torch.Tensor]):
        super().__init__()
        self.features = features

    def forward(self, x):
        return dict(self.features)

    def output_shape(self):
        return {f: ShapeSpec(channels=1, stride=s) for f, s in zip(self.features, (8, 16, 32))}


def bilinear_by_hand(src: List[List[float]], out_h: int, out_w: int) -> List[List[float]]:
    """Bilinear resize, align_corners False: source coordinate (dst + 0.5) * in / out - 0.5,
    clamped at 0, neighbours clamped at the border (float64 loops)."""
    in_h, in_w = len(src), len(src[0])

    def taps(dst: int, n_in: int, n_out: int):
        s = max((dst + 0.5) * n_in / n_out - 0.5, 0.0)
        i0 = int(s)
        return i0, min(i0 + 1, n_in - 1), s - i0

    out = []
    for oy in range(out_h):
        y0, y1, ly = taps(oy, in_h, out_h)
        row = []
        for ox in range(out_w):
            x0, x1, lx = taps(ox, in_w, out_w)
            row.append((1 - ly) * ((1 - lx) * src[y0][x0] + lx * src[y0][x1])
                       + ly * ((1 - lx) * src[y1][x0] + lx * src[y1][x1]))
        out.append(row)
    return out


def identity_fpn(features: Dict[str, torch.Tensor]) -> YolactFPN:
    """One-channel YOLACT FPN whose lateral and output convs are identities."""
    fpn = YolactFPN(FixedBottomUp(features), ["res3", "res4", "res5"], out_channels=1,
                    top_block=LastLevelP6P7FromC5NoReLU(1, 1))
    with torch.no_grad():
        for conv in list(fpn.lateral_convs) + list(fpn.output_convs):
            conv.weight.zero_()
            conv.weight[:, :, conv.weight.shape[2] // 2, conv.weight.shape[3] // 2] = 1.0
            conv.bias.zero_()
    return fpn


def test_top_down_is_bilinear_to_the_lateral_size():
    """At 550's sides (69/35/18): P5 = C5, P4 = C4 + up(P5 -> 35), P3 = C3 + up(P4 -> 69),
    the resizes worked out by hand; detectron2's nearest x2 cannot even add 18 -> 36 to 35."""
    torch.manual_seed(0)
    features = {f: torch.randn(1, 1, n, n, dtype=torch.float64)
                for f, n in zip(("res3", "res4", "res5"), SIDES_550[:3])}
    fpn = identity_fpn(features).double()
    out = fpn(torch.zeros(1, 3, 550, 550))

    c3, c4, c5 = (features[f][0, 0].tolist() for f in ("res3", "res4", "res5"))
    p4 = [[a + b for a, b in zip(r4, ru)] for r4, ru in zip(c4, bilinear_by_hand(c5, 35, 35))]
    p3 = [[a + b for a, b in zip(r3, ru)] for r3, ru in zip(c3, bilinear_by_hand(p4, 69, 69))]
    assert torch.allclose(out["p5"][0, 0], features["res5"][0, 0], atol=1e-12)
    assert torch.allclose(out["p4"][0, 0], torch.tensor(p4, dtype=torch.float64), atol=1e-9)
    assert torch.allclose(out["p3"][0, 0], torch.tensor(p3, dtype=torch.float64), atol=1e-9)
    with pytest.raises(RuntimeError):
        FPN.forward(fpn, torch.zeros(1, 3, 550, 550))  # nearest x2: 36 + 35


def test_forward_matches_an_explicit_recomputation():
    """The narrow R-18 at 550 (random weights, fuse 'sum' and 'avg'): every level equals the
    top-down path written out with F.interpolate(size=lateral size, bilinear)."""
    for fuse_type in ("sum", "avg"):
        cfg = yolact_cfg()
        cfg.MODEL.FPN.FUSE_TYPE = fuse_type
        fpn, _ = build_yolact(cfg)
        x = torch.randn(1, 3, 550, 550)
        with torch.no_grad():
            out = fpn(x)
            c = fpn.bottom_up(x)
            lat = {f: getattr(fpn, f"fpn_lateral{f[-1]}")(c[f]) for f in ("res3", "res4", "res5")}
            p, expected = lat["res5"], {}
            expected["p5"] = fpn.fpn_output5(p)
            for f in ("res4", "res3"):
                up = nn.functional.interpolate(p, size=lat[f].shape[-2:], mode="bilinear",
                                               align_corners=False)
                p = (lat[f] + up) / (2 if fuse_type == "avg" else 1)
                expected["p" + f[-1]] = getattr(fpn, f"fpn_output{f[-1]}")(p)
            expected["p6"] = fpn.top_block.p6(c["res5"])
            expected["p7"] = fpn.top_block.p7(expected["p6"])
        assert list(out) == list(LEVELS)
        for level in LEVELS:
            assert torch.allclose(out[level], expected[level], atol=1e-6), (fuse_type, level)


def test_p6_from_c5_and_no_relu_before_p7():
    """P6 is conv/2 of res5 (not P5); negative P6 values reach P7 unclipped."""
    fpn, _ = build_yolact(yolact_cfg())
    assert fpn.top_block.in_feature == "res5"
    assert fpn.top_block.p6.in_channels == fpn.bottom_up.output_shape()["res5"].channels != 8
    with torch.no_grad():
        fpn.top_block.p6.weight.zero_()
        fpn.top_block.p6.bias.fill_(-1.0)  # P6 = -1 everywhere
        fpn.top_block.p7.weight.zero_()
        fpn.top_block.p7.bias.zero_()
        for ch in range(8):
            fpn.top_block.p7.weight[ch, ch, 1, 1] = 1.0  # P7 = P6 sampled at stride 2
        out = fpn(torch.randn(1, 3, 192, 192))
    assert torch.equal(out["p6"], torch.full_like(out["p6"], -1.0))
    assert torch.equal(out["p7"], torch.full_like(out["p7"], -1.0))  # ReLU would give 0
    c5 = torch.randn(1, 5, 6, 6)
    block = LastLevelP6P7FromC5NoReLU(5, 4)
    p6, p7 = block(c5)
    assert torch.equal(p6, block.p6(c5)) and torch.equal(p7, block.p7(p6))


@pytest.mark.parametrize(
    "backbone,depth",
    [("build_yolact_small_resnet_fpn_backbone", 18), ("build_yolact_resnet_fpn_backbone", 50)],
)
def test_shapes_at_550_and_192_without_padding(backbone, depth):
    """P3-P7 are 69/35/18/9/5 at 550 (550 is not padded) and 24/12/6/3/2 at 192."""
    fpn, _ = build_yolact(yolact_cfg(backbone, depth))
    assert isinstance(fpn, YolactFPN)
    assert fpn.size_divisibility == 0  # not FPN's 128, not mmdet's usual 32 (550 -> 576)
    assert {f: s.stride for f, s in fpn.output_shape().items()} == dict(
        zip(LEVELS, (8, 16, 32, 64, 128)))
    with torch.no_grad():
        for side, sides in ((550, SIDES_550), (192, SIDES_192)):
            out = fpn(torch.zeros(1, 3, side, side))
            assert [tuple(out[f].shape) for f in LEVELS] == [(1, 8, n, n) for n in sides]


def test_builders_registered_and_need_res3_to_res5():
    assert BACKBONE_REGISTRY.get("build_yolact_resnet_fpn_backbone")
    assert BACKBONE_REGISTRY.get("build_yolact_small_resnet_fpn_backbone")
    assert ANCHOR_GENERATOR_REGISTRY.get("FractionalStrideAnchorGenerator")
    cfg = yolact_cfg()
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res4", "res5"]
    with pytest.raises(ValueError, match="res3"):
        build_backbone(cfg)


# ------------------------------------------------------------------------------ anchors


def published_anchors(image_hw: Tuple[int, int], sides: Sequence[Tuple[int, int]]):
    """mmdet's AnchorGenerator of the RS-YOLACT config, float64 loops: per level, strides
    (W / w, H / h), centre half a stride in, base anchors ordered ratios then scales
    (scale_major), locations row-major (x fastest), A anchors per location."""
    scales = [OCTAVE_BASE_SCALE * 2 ** (i / 1) for i in range(1)]  # scales_per_octave 1
    levels = []
    for base_size, (h, w) in zip(BASE_SIZES, sides):
        stride_x, stride_y = image_hw[1] / w, image_hw[0] / h
        cx, cy = image_hw[1] * 0.5 / w, image_hw[0] * 0.5 / h
        base = []
        for ratio in RATIOS:
            for scale in scales:
                ws = base_size * scale / math.sqrt(ratio)
                hs = base_size * scale * math.sqrt(ratio)
                base.append((cx - 0.5 * ws, cy - 0.5 * hs, cx + 0.5 * ws, cy + 0.5 * hs))
        level = []
        for i in range(h):
            for j in range(w):
                for x0, y0, x1, y1 in base:
                    dx, dy = j * stride_x, i * stride_y
                    level.append((x0 + dx, y0 + dy, x1 + dx, y1 + dy))
        levels.append(torch.tensor(level, dtype=torch.float64))
    return levels


def test_cell_anchors_are_size_sqrt_ratio_in_ratio_order():
    """detectron2's cell anchors: h = s*sqrt(r), w = s/sqrt(r), centred at 0, ordered sizes
    then ratios; with one size per level the order is ratios 0.5, 1, 2, mmdet's order
    (ratios then scales) with its one scale: the two orders coincide."""
    _, gen = build_yolact(yolact_cfg())
    assert gen.num_cell_anchors == [3] * 5
    for (size,), cells in zip(SIZES, gen.cell_anchors):
        expected = [[-size / math.sqrt(r) / 2, -size * math.sqrt(r) / 2,
                     size / math.sqrt(r) / 2, size * math.sqrt(r) / 2] for r in RATIOS]
        assert torch.allclose(cells.double(), torch.tensor(expected, dtype=torch.float64),
                              atol=1e-4)


def test_anchors_match_the_published_ones_at_550():
    """All 19,248 anchors at 550 (5 levels), in order, within 1e-3 px of mmdet's."""
    _, gen = build_yolact(yolact_cfg())
    features = [torch.zeros(1, 8, n, n) for n in SIDES_550]
    anchors = gen(features, image_size=[550, 550])
    reference = published_anchors((550, 550), [(n, n) for n in SIDES_550])
    assert [len(a) for a in anchors] == [n * n * 3 for n in SIDES_550]
    for level, (ours, ref) in enumerate(zip(anchors, reference)):
        assert (ours.tensor.double() - ref).abs().max().item() < 1e-3, level
    # The grid spans the image: the last P7 centre is half a stride (55 px) from its edge.
    last = anchors[-1].tensor[-1]
    assert abs((last[0] + last[2]).item() / 2 - (550 - 55)) < 1e-3


def test_anchors_per_axis_strides_on_a_non_square_input():
    _, gen = build_yolact(yolact_cfg())
    sides = [(38, 52), (19, 26), (10, 13), (5, 7), (3, 4)]
    anchors = gen([torch.zeros(1, 8, h, w) for h, w in sides], image_size=[300, 410])
    for ours, ref in zip(anchors, published_anchors((300, 410), sides)):
        assert (ours.tensor.double() - ref).abs().max().item() < 1e-3


def test_without_image_size_identical_to_default_anchor_generator():
    cfg = yolact_cfg()
    _, gen = build_yolact(cfg)
    cfg.MODEL.ANCHOR_GENERATOR.NAME = "DefaultAnchorGenerator"
    default = build_anchor_generator(cfg, [ShapeSpec(stride=s) for s in (8, 16, 32, 64, 128)])
    assert type(default) is DefaultAnchorGenerator
    for sides in (SIDES_192, SIDES_550):
        features = [torch.zeros(1, 8, n, n) for n in sides]
        for ours, theirs in zip(gen(features), default(features)):
            assert torch.equal(ours.tensor, theirs.tensor)
    # At 192 the strides 192 / (24, 12, 6, 3) are the integer ones; P7 (2 x 2) gets 96.
    features = [torch.zeros(1, 8, n, n) for n in SIDES_192]
    fractional, integer = gen(features, image_size=[192, 192]), default(features)
    for ours, theirs in zip(fractional[:4], integer[:4]):
        assert torch.allclose(ours.tensor, theirs.tensor, atol=1e-4)
    assert not torch.allclose(fractional[4].tensor, integer[4].tensor)


class BackboneAndAnchors(nn.Module):
    """What a YOLACT meta-architecture does with the two: features, then anchors for the
    input's size taken from tensor shapes (as TracingAdapter traces it)."""

    def __init__(self, backbone: YolactFPN, anchor_generator: FractionalStrideAnchorGenerator):
        super().__init__()
        self.backbone = backbone
        self.anchor_generator = anchor_generator

    def forward(self, images: torch.Tensor):
        features = self.backbone(images)
        anchors = self.anchor_generator([features[f] for f in LEVELS], images.shape[-2:])
        return tuple(features[f] for f in LEVELS) + (cat_anchors(anchors),)


def test_traced_model_follows_the_input_size():
    """Traced at 192, run at 550 and 256x320: features and anchors as in eager mode (the
    strides come from shapes, not from Python numbers frozen at trace time)."""
    backbone, gen = build_yolact(yolact_cfg())
    model = BackboneAndAnchors(backbone, gen).eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        # check_trace off: its re-trace differs only in mangled module type names.
        traced = torch.jit.trace(model, torch.randn(1, 3, 192, 192), check_trace=False)
        for hw in ((550, 550), (256, 320)):
            x = torch.randn(1, 3, *hw)
            got, expected = traced(x), model(x)
            assert len(got) == len(expected) == 6
            for a, b in zip(got, expected):
                assert a.shape == b.shape and torch.allclose(a, b, atol=1e-5)
    anchors_550 = traced(torch.zeros(1, 3, 550, 550))[-1].double()
    assert (anchors_550 - torch.cat(published_anchors((550, 550), [(n, n) for n in SIDES_550]))
            ).abs().max().item() < 1e-3


def test_anchor_generator_is_scriptable():
    _, gen = build_yolact(yolact_cfg())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted = torch.jit.script(gen)
    features = [torch.zeros(1, 8, n, n) for n in SIDES_550]
    assert torch.equal(cat_anchors(scripted(features, [550, 550])),
                       cat_anchors(gen(features, image_size=[550, 550])))
    assert torch.equal(cat_anchors(scripted(features)), cat_anchors(gen(features)))
