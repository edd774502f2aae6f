"""SparseROIAlign against a float64 loop of the RoIAlign definition and against torchvision."""
import importlib
import math

import pytest
import torch
from torchvision.ops import roi_align

from detectron2.config import get_cfg
from detectron2.layers import ROIAlign
from detectron2.modeling.poolers import ROIPooler
from detectron2.structures import Boxes

from rs_detectron2.config import add_rs_config
from rs_detectron2.engine import RSTrainer
from rs_detectron2.layers import SparseROIAlign, sparse_roi_align, use_sparse_roi_align

# The module (its function of the same name shadows it in rs_detectron2.layers).
sparse_module = importlib.import_module("rs_detectron2.layers.sparse_roi_align")


def _bilinear(feature, y, x):
    """One sample of ``feature`` (C, H, W) at (y, x), by the RoIAlign definition."""
    channels, height, width = feature.shape
    if y < -1.0 or y > height or x < -1.0 or x > width:
        return torch.zeros(channels, dtype=feature.dtype)
    y, x = max(y, 0.0), max(x, 0.0)
    y_lo, x_lo = int(math.floor(y)), int(math.floor(x))
    if y_lo >= height - 1:
        y_lo = y_hi = height - 1
        y = float(y_lo)
    else:
        y_hi = y_lo + 1
    if x_lo >= width - 1:
        x_lo = x_hi = width - 1
        x = float(x_lo)
    else:
        x_hi = x_lo + 1
    ly, lx = y - y_lo, x - x_lo
    hy, hx = 1 - ly, 1 - lx
    return (hy * hx * feature[:, y_lo, x_lo] + hy * lx * feature[:, y_lo, x_hi]
            + ly * hx * feature[:, y_hi, x_lo] + ly * lx * feature[:, y_hi, x_hi])


def reference_roi_align(features, rois, output_size, scale, sampling_ratio, aligned):
    """RoIAlign as a plain loop in float64: every bin averages its grid of bilinear samples."""
    features = features.double()
    out_h, out_w = output_size
    out = torch.zeros(rois.shape[0], features.shape[1], out_h, out_w, dtype=torch.float64)
    offset = 0.5 if aligned else 0.0
    for r, (b, x1, y1, x2, y2) in enumerate(rois.double().tolist()):
        x1, y1, x2, y2 = (v * scale - offset for v in (x1, y1, x2, y2))
        roi_w, roi_h = x2 - x1, y2 - y1
        if not aligned:
            roi_w, roi_h = max(roi_w, 1.0), max(roi_h, 1.0)
        bin_h, bin_w = roi_h / out_h, roi_w / out_w
        grid_h = sampling_ratio if sampling_ratio > 0 else math.ceil(roi_h / out_h)
        grid_w = sampling_ratio if sampling_ratio > 0 else math.ceil(roi_w / out_w)
        count = max(grid_h * grid_w, 1)
        for ph in range(out_h):
            for pw in range(out_w):
                total = torch.zeros(features.shape[1], dtype=torch.float64)
                for iy in range(grid_h):
                    y = y1 + ph * bin_h + (iy + 0.5) * bin_h / grid_h
                    for ix in range(grid_w):
                        x = x1 + pw * bin_w + (ix + 0.5) * bin_w / grid_w
                        total += _bilinear(features[int(b)], y, x)
                out[r, :, ph, pw] = total / count
    return out


def random_rois(generator, num, images, image_h, image_w, max_side):
    """Boxes of every kind: inside, crossing the border, outside, empty, inverted."""
    centre = torch.rand(num, 2, generator=generator) * torch.tensor([image_w * 1.4, image_h * 1.4])
    centre -= torch.tensor([image_w * 0.2, image_h * 0.2])
    side = torch.rand(num, 2, generator=generator) * max_side
    boxes = torch.cat([centre - side / 2, centre + side / 2], 1)
    kind = torch.randint(0, 10, (num,), generator=generator)
    boxes[kind == 0, 2] = boxes[kind == 0, 0]  # zero width
    boxes[kind == 1, 3] = boxes[kind == 1, 1] - 3.0  # inverted (negative height)
    image = torch.randint(0, images, (num, 1), generator=generator).float()
    return torch.cat([image, boxes], 1)


CASES = [  # (aligned, sampling_ratio, output_size, scale, H, W)
    (True, 0, (7, 7), 0.25, 9, 11),
    (False, 0, (7, 7), 0.25, 9, 11),
    (True, 2, (3, 4), 0.5, 6, 5),
    (False, 1, (2, 2), 1.0, 5, 7),
    (True, 0, (5, 3), 0.125, 4, 6),
    (True, 0, (2, 2), 0.5, 1, 1),
    (False, 3, (4, 4), 0.25, 1, 8),
]


@pytest.mark.parametrize("aligned,sampling_ratio,output_size,scale,height,width", CASES)
def test_forward_matches_float64_loop_and_torchvision(aligned, sampling_ratio, output_size,
                                                      scale, height, width):
    generator = torch.Generator().manual_seed(height * 100 + width)
    for trial in range(4):
        features = torch.randn(2, 3, height, width, generator=generator, dtype=torch.float64)
        rois = random_rois(generator, 12, 2, height / scale, width / scale,
                           max_side=2.5 * max(height, width) / scale).double()
        expected = reference_roi_align(features, rois, output_size, scale, sampling_ratio, aligned)
        got = sparse_roi_align(features, rois, output_size, scale, sampling_ratio, aligned)
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)
        vision = roi_align(features, rois, output_size, scale, sampling_ratio, aligned)
        torch.testing.assert_close(got, vision, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("aligned,sampling_ratio,output_size,scale,height,width", CASES)
def test_gradient_matches_torchvision(aligned, sampling_ratio, output_size, scale, height, width):
    generator = torch.Generator().manual_seed(7 + height * width)
    for trial in range(4):
        features = torch.randn(2, 4, height, width, generator=generator, requires_grad=True)
        rois = random_rois(generator, 20, 2, height / scale, width / scale,
                           max_side=2.5 * max(height, width) / scale)
        out = sparse_roi_align(features, rois, output_size, scale, sampling_ratio, aligned)
        vision = roi_align(features, rois, output_size, scale, sampling_ratio, aligned)
        torch.testing.assert_close(out, vision, rtol=1e-5, atol=1e-6)
        grad_out = torch.randn(out.shape, generator=generator)
        (ours,) = torch.autograd.grad(out, features, grad_out)
        (theirs,) = torch.autograd.grad(vision, features, grad_out)
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def test_gradcheck_float64():
    generator = torch.Generator().manual_seed(3)
    features = torch.randn(2, 2, 6, 7, generator=generator, dtype=torch.float64, requires_grad=True)
    rois = random_rois(generator, 6, 2, 24, 28, max_side=30).double()
    assert torch.autograd.gradcheck(
        lambda f: sparse_roi_align(f, rois, (3, 3), 0.25, 0, True), (features,))


def test_realistic_sizes_match_torchvision():
    """An FPN level at detector scale: 2 images, 256 channels, 1,000 RoIs."""
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(2, 256, 50, 67, generator=generator, requires_grad=True)
    rois = random_rois(generator, 1000, 2, 800, 1067, max_side=500)
    out = sparse_roi_align(features, rois, 7, 1 / 16, 0, True)
    vision = roi_align(features, rois, (7, 7), 1 / 16, 0, True)
    torch.testing.assert_close(out, vision, rtol=1e-5, atol=1e-5)
    grad_out = torch.randn(out.shape, generator=generator)
    (ours,) = torch.autograd.grad(out, features, grad_out)
    (theirs,) = torch.autograd.grad(vision, features, grad_out)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


def test_chunking_gives_the_same_matrix(monkeypatch):
    generator = torch.Generator().manual_seed(5)
    features = torch.randn(2, 3, 12, 10, generator=generator)
    rois = random_rois(generator, 40, 2, 48, 40, max_side=60)
    whole = sparse_roi_align(features, rois, 4, 0.25, 0, True)
    monkeypatch.setattr(sparse_module, "_MAX_CHUNK_ENTRIES", 1)  # one RoI per chunk
    chunked = sparse_roi_align(features, rois, 4, 0.25, 0, True)
    assert torch.equal(whole, chunked)


def test_no_rois_and_bad_input():
    features = torch.randn(1, 3, 5, 5, requires_grad=True)
    out = sparse_roi_align(features, torch.zeros(0, 5), (2, 3), 1.0, 0, True)
    assert out.shape == (0, 3, 2, 3)
    out.sum().backward()
    assert torch.equal(features.grad, torch.zeros_like(features))
    with pytest.raises(ValueError, match="rois"):
        sparse_roi_align(features, torch.zeros(3, 4), 2, 1.0, 0, True)


def _pooler(pooler_type="ROIAlignV2"):
    return ROIPooler(output_size=7, scales=(1 / 4, 1 / 8, 1 / 16, 1 / 32), sampling_ratio=0,
                     pooler_type=pooler_type)


def test_pooler_with_sparse_levels_matches_detectron2():
    generator = torch.Generator().manual_seed(11)
    features = [torch.randn(2, 8, 128 // s, 160 // s, generator=generator) for s in (4, 8, 16, 32)]
    boxes = [Boxes(random_rois(generator, n, 1, 128, 160, max_side=150)[:, 1:]) for n in (30, 45)]
    stock = _pooler()
    sparse = use_sparse_roi_align(_pooler())
    assert all(type(level) is SparseROIAlign for level in sparse.level_poolers)
    assert [(p.output_size, p.spatial_scale, p.sampling_ratio, p.aligned) for p in sparse.level_poolers] \
        == [(p.output_size, p.spatial_scale, p.sampling_ratio, p.aligned) for p in stock.level_poolers]
    torch.testing.assert_close(sparse(features, boxes), stock(features, boxes), rtol=1e-5, atol=1e-6)


def test_other_pooler_types_fail_loudly():
    with pytest.raises(ValueError, match="POOLER_SPARSE_CPU"):
        use_sparse_roi_align(_pooler("ROIPool"))


@pytest.mark.parametrize("roi_heads", ["RSStandardROIHeads", "StandardROIHeads"])
@pytest.mark.parametrize("enabled", [True, False])
def test_roi_heads_use_it_when_configured(enabled, roi_heads):
    """POOLER_SPARSE_CPU of each pooler's node, applied by RSTrainer.build_model, for the RS
    and for detectron2's own RoI heads."""
    cfg = get_cfg()
    add_rs_config(cfg)
    cfg.MODEL.BACKBONE.NAME = "build_small_resnet_fpn_backbone"
    cfg.MODEL.RESNETS.DEPTH = 18
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 16
    cfg.MODEL.RESNETS.STEM_OUT_CHANNELS = 8
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.FPN.IN_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.FPN.OUT_CHANNELS = 16
    cfg.MODEL.RPN.IN_FEATURES = ["p2", "p3", "p4", "p5", "p6"]
    cfg.MODEL.ANCHOR_GENERATOR.SIZES = [[16], [32], [64], [128], [256]]
    cfg.MODEL.ROI_HEADS.NAME = roi_heads
    cfg.MODEL.ROI_HEADS.IN_FEATURES = ["p2", "p3", "p4", "p5"]
    cfg.MODEL.ROI_BOX_HEAD.NAME = "FastRCNNConvFCHead"
    cfg.MODEL.ROI_BOX_HEAD.NUM_FC = 2
    cfg.MODEL.ROI_BOX_HEAD.POOLER_TYPE = "ROIAlignV2"
    cfg.MODEL.ROI_MASK_HEAD.POOLER_TYPE = "ROIAlignV2"
    cfg.MODEL.MASK_ON = True
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.ROI_BOX_HEAD.POOLER_SPARSE_CPU = enabled
    cfg.MODEL.ROI_MASK_HEAD.POOLER_SPARSE_CPU = not enabled
    model = RSTrainer.build_model(cfg)
    box_type = SparseROIAlign if enabled else ROIAlign
    mask_type = ROIAlign if enabled else SparseROIAlign
    assert all(type(level) is box_type for level in model.roi_heads.box_pooler.level_poolers)
    assert all(type(level) is mask_type for level in model.roi_heads.mask_pooler.level_poolers)


def test_old_key_names_fail_with_the_new_one():
    cfg = get_cfg()
    add_rs_config(cfg)
    with pytest.raises(KeyError, match="POOLER_SPARSE_CPU"):
        cfg.merge_from_list(["MODEL.RS.SPARSE_CPU_ROI_ALIGN", "False"])


def test_module_on_cpu_equals_detectron2_roialign():
    generator = torch.Generator().manual_seed(2)
    features = torch.randn(2, 5, 16, 20, generator=generator)
    rois = random_rois(generator, 25, 2, 64, 80, max_side=70)
    ours = SparseROIAlign((7, 7), 0.25, 0, aligned=True)
    theirs = ROIAlign((7, 7), 0.25, 0, aligned=True)
    torch.testing.assert_close(ours(features, rois), theirs(features, rois), rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_calls_torchvision():
    features = torch.randn(1, 3, 8, 8, device="cuda")
    rois = torch.tensor([[0, 1.0, 1.0, 20.0, 25.0]], device="cuda")
    ours = SparseROIAlign((2, 2), 0.25, 0, aligned=True)
    assert torch.equal(ours(features, rois), roi_align(features, rois, (2, 2), 0.25, 0, True))
