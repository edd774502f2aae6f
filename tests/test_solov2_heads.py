"""SOLOv2's heads (rs_detectron2.modeling.meta_arch.solov2_heads) against the published
RS-SOLOv2 layers: shapes at the R-101 and light R-34 widths, split_feats, the coordinate
channels, points_nms, gather_kernels, dynamic_masks, GroupNorm, the category prior and
gradients."""
import functools
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone.fpn import build_resnet_fpn_backbone

from rs_detectron2.modeling.meta_arch.solov2_heads import (
    SPLIT_STRIDES,
    SOLOv2InstanceHead,
    SOLOv2MaskFeatureHead,
    coord_features,
    dynamic_masks,
    gather_kernels,
    points_nms,
    split_feats,
)

GRIDS = (40, 36, 24, 16, 12)
# published configs: ranksort_solov2_r101_fpn_3x.py / ranksort_solov2_light_448_r34_fpn_3x.py
SETTINGS = {
    "full": dict(head=dict(seg_feat_channels=512, stacked_convs=4, ins_out_channels=256),
                 mask=dict(feat_channels=128, out_channels=256)),
    "light": dict(head=dict(seg_feat_channels=256, stacked_convs=2, ins_out_channels=128),
                  mask=dict(feat_channels=128, out_channels=128)),
}


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@functools.lru_cache(maxsize=None)
def _fpn_sizes(height, width):
    """p2..p6 sizes from detectron2's build_resnet_fpn_backbone (R-18, FPN width 8)."""
    cfg = get_cfg()
    levels = ["res2", "res3", "res4", "res5"]
    cfg.merge_from_list(["MODEL.RESNETS.DEPTH", 18, "MODEL.RESNETS.RES2_OUT_CHANNELS", 64,
                         "MODEL.FPN.OUT_CHANNELS", 8, "MODEL.FPN.IN_FEATURES", levels,
                         "MODEL.RESNETS.OUT_FEATURES", levels,
                         "MODEL.BACKBONE.FREEZE_AT", 0])
    backbone = build_resnet_fpn_backbone(cfg, ShapeSpec(channels=3)).eval()
    with torch.no_grad():
        out = backbone(torch.zeros(1, 3, height, width))
    return [tuple(out[k].shape[-2:]) for k in ("p2", "p3", "p4", "p5", "p6")]


def _feats(sizes, channels=256, n=1, seed=0, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, channels, *s, generator=g).requires_grad_(requires_grad)
            for s in sizes]


@pytest.mark.parametrize("setting", ["full", "light"])
@pytest.mark.parametrize("size", [(128, 160), (192, 192)])
def test_output_shapes(setting, size):
    sizes = _fpn_sizes(*size)
    h, w = size
    assert sizes == [(math.ceil(h / s), math.ceil(w / s)) for s in (4, 8, 16, 32, 64)]
    cfg = SETTINGS[setting]
    head = SOLOv2InstanceHead(num_classes=3, **cfg["head"]).eval()
    mask_head = SOLOv2MaskFeatureHead(**cfg["mask"]).eval()
    feats = _feats(sizes)
    with torch.no_grad():
        cates, kernels = head(feats)
        mask_feats = mask_head(feats[:4])
    e = cfg["head"]["ins_out_channels"]
    assert [tuple(c.shape) for c in cates] == [(1, 3, s, s) for s in GRIDS]
    assert [tuple(k.shape) for k in kernels] == [(1, e, s, s) for s in GRIDS]
    assert tuple(mask_feats.shape) == (1, e, h // 4, w // 4)
    assert mask_head.out_channels == head.ins_out_channels
    assert float(mask_feats.min()) >= 0  # the last ConvModule's ReLU


@pytest.mark.parametrize("size", [(128, 160), (192, 192)])
def test_split_feats_sizes(size):
    sizes = _fpn_sizes(*size)
    split = split_feats(_feats(sizes, channels=2))
    h, w = size
    assert [tuple(x.shape[-2:]) for x in split] == [sizes[1], sizes[1], sizes[2], sizes[3],
                                                     sizes[3]]
    assert [tuple(x.shape[-2:]) for x in split] == [(h // s, w // s) for s in SPLIT_STRIDES]


def test_split_feats_resampling():
    # P2 x0.5 (floored size, torch < 1.6 size-based sampling), P6 to P5's size, bilinear
    p = [torch.randn(1, 2, *s) for s in ((33, 41), (17, 21), (9, 11), (5, 6), (3, 3))]
    split = split_feats(p)
    assert tuple(split[0].shape[-2:]) == (16, 20)
    assert torch.equal(split[0], F.interpolate(p[0], size=(16, 20), mode="bilinear",
                                               align_corners=False))
    assert all(split[i] is p[i] for i in (1, 2, 3))
    assert torch.equal(split[4], F.interpolate(p[4], size=(5, 6), mode="bilinear",
                                               align_corners=False))
    even = torch.randn(1, 2, 8, 12)
    assert torch.allclose(split_feats([even] + p[1:])[0], F.avg_pool2d(even, 2), atol=1e-6)
    with pytest.raises(ValueError):
        split_feats(p[:4])


def test_coord_features_by_hand():
    coords = coord_features(torch.zeros(2, 7, 3, 5))
    x = torch.tensor([[-1.0, -0.5, 0.0, 0.5, 1.0]] * 3)
    y = torch.tensor([[-1.0] * 5, [0.0] * 5, [1.0] * 5])
    assert coords.shape == (2, 2, 3, 5)
    for n in range(2):
        assert torch.equal(coords[n, 0], x) and torch.equal(coords[n, 1], y)


def _capture_input(module, store, key):
    return module.register_forward_pre_hook(lambda m, args: store.__setitem__(key, args[0]))


def test_instance_head_coordinate_channels():
    # grids equal to the levels' sizes: the resize is the identity
    sizes = [(8, 10), (4, 5), (2, 3), (1, 2), (1, 1)]
    grids = (4, 4, 2, 1, 1)
    head = SOLOv2InstanceHead(in_channels=32, num_classes=2, seg_feat_channels=32,
                              stacked_convs=1, ins_out_channels=8, num_grids=grids)
    feats = _feats(sizes, channels=32, n=2)
    seen = {}
    hooks = [_capture_input(head.kernel_convs[0][0], seen, "kernel"),
             _capture_input(head.cate_convs[0][0], seen, "cate")]
    split = split_feats(feats)
    x = split[1]  # (4, 5) -> resized to 4 x 4
    head.forward_single(x, 4)
    hand = torch.stack([torch.linspace(-1, 1, 5).expand(4, 5),
                        torch.linspace(-1, 1, 4)[:, None].expand(4, 5)])
    resized = F.interpolate(torch.cat([x, hand.expand(2, -1, -1, -1)], 1), size=4,
                            mode="bilinear", align_corners=False)
    assert seen["kernel"].shape == (2, 34, 4, 4) and seen["cate"].shape == (2, 32, 4, 4)
    assert torch.equal(seen["kernel"], resized)
    assert torch.equal(seen["cate"], resized[:, :32])
    # a level whose size is its grid: the coordinate channels are exactly the linspaces
    x = torch.randn(2, 32, 3, 3)
    head.forward_single(x, 3)
    hand = torch.tensor([[-1.0, 0.0, 1.0]] * 3)
    assert torch.equal(seen["kernel"][:, 32], hand.expand(2, 3, 3))
    assert torch.equal(seen["kernel"][:, 33], hand.t().expand(2, 3, 3))
    assert torch.equal(seen["kernel"][:, :32], x)
    for hook in hooks:
        hook.remove()


def test_mask_head_coordinates_on_p5_only():
    head = SOLOv2MaskFeatureHead(in_channels=32, feat_channels=32, out_channels=32)
    firsts = [level[0] if isinstance(level[0], nn.Conv2d) else level[0][0]
              for level in head.convs_all_levels]
    assert [c.in_channels for c in firsts] == [32, 32, 32, 34]
    # i x (conv + GN + ReLU + upsample x2) for level i > 0
    ups = [sum(isinstance(m, nn.Upsample) for m in level.modules())
           for level in head.convs_all_levels]
    assert ups == [0, 1, 2, 3]
    for m in head.modules():
        if isinstance(m, nn.Upsample):
            assert m.scale_factor == 2 and m.mode == "bilinear" and not m.align_corners
    seen = {}
    hook = _capture_input(firsts[3], seen, "p5")
    feats = _feats([(16, 24), (8, 12), (4, 6), (2, 3)], channels=32, n=2)
    assert head(feats).shape == (2, 32, 16, 24)
    hook.remove()
    assert torch.equal(seen["p5"][:, :32], feats[3])
    assert torch.equal(seen["p5"][:, 32], torch.tensor([[-1.0, 0.0, 1.0]] * 2).expand(2, 2, 3))
    assert torch.equal(seen["p5"][:, 33], torch.tensor([[-1.0] * 3, [1.0] * 3]).expand(2, 2, 3))
    with pytest.raises(ValueError):
        head(feats[:3])


def _conv_norm_pairs(module):
    layers = [m for m in module.modules() if not list(m.children())]
    return [(a, b) for a, b in zip(layers, layers[1:]) if isinstance(a, nn.Conv2d)]


@pytest.mark.parametrize("setting", ["full", "light"])
def test_group_norm_after_every_stacked_conv(setting):
    cfg = SETTINGS[setting]
    head = SOLOv2InstanceHead(**cfg["head"])
    width, depth = cfg["head"]["seg_feat_channels"], cfg["head"]["stacked_convs"]
    for tower in (head.kernel_convs, head.cate_convs):
        assert len(tower) == depth
        for block in tower:
            conv, norm, act = block
            assert isinstance(conv, nn.Conv2d) and conv.kernel_size == (3, 3)
            assert conv.bias is None and conv.out_channels == width
            assert isinstance(norm, nn.GroupNorm) and norm.num_groups == 32
            assert norm.num_channels == width and isinstance(act, nn.ReLU)
    assert head.kernel_convs[0][0].in_channels == 256 + 2
    assert head.cate_convs[0][0].in_channels == 256
    assert head.solo_kernel.kernel_size == (3, 3) and head.solo_cate.kernel_size == (3, 3)
    assert head.solo_kernel.out_channels == cfg["head"]["ins_out_channels"]
    mask_head = SOLOv2MaskFeatureHead(**cfg["mask"])
    pairs = _conv_norm_pairs(mask_head)
    assert len(pairs) == 1 + 1 + 2 + 3 + 1
    for conv, norm in pairs:
        assert conv.bias is None and isinstance(norm, nn.GroupNorm) and norm.num_groups == 32
    assert mask_head.conv_pred[0].kernel_size == (1, 1)
    assert mask_head.conv_pred[0].out_channels == cfg["mask"]["out_channels"]


def test_init_and_category_prior():
    torch.manual_seed(0)
    head = SOLOv2InstanceHead()
    prior = -math.log(99)
    assert torch.allclose(head.solo_cate.bias, torch.full((80,), prior))
    assert torch.allclose(torch.sigmoid(head.solo_cate.bias), torch.full((80,), 0.01))
    assert torch.equal(head.solo_kernel.bias, torch.zeros(256))
    for m in head.modules():
        if isinstance(m, nn.Conv2d):
            assert abs(float(m.weight.std()) - 0.01) < 1e-3
        if isinstance(m, nn.GroupNorm):
            assert torch.equal(m.weight, torch.ones_like(m.weight))
            assert torch.equal(m.bias, torch.zeros_like(m.bias))
    for m in SOLOv2MaskFeatureHead().modules():
        if isinstance(m, nn.Conv2d):
            assert abs(float(m.weight.std()) - 0.01) < 1e-3


def test_points_nms_vs_loop():
    g = torch.Generator().manual_seed(0)
    heat = torch.rand(2, 3, 6, 5, generator=g)
    heat[0, 0, 2, 2] = heat[0, 0, 1, 1] = heat[0, 0, 1, 2] = 0.99  # ties are kept
    out = points_nms(heat)
    ref = torch.zeros_like(heat)
    n, k, h, w = heat.shape
    for a in range(n):
        for c in range(k):
            for i in range(h):
                for j in range(w):
                    window = heat[a, c, max(i - 1, 0):i + 1, max(j - 1, 0):j + 1]
                    if heat[a, c, i, j] == window.max():
                        ref[a, c, i, j] = heat[a, c, i, j]
    assert torch.equal(out, ref)
    assert out[0, 0, 2, 2] == 0.99
    with pytest.raises(ValueError):
        points_nms(heat, kernel=3)


def test_gather_kernels_order_vs_loop():
    g = torch.Generator().manual_seed(0)
    maps = [torch.randn(2, 4, s, s, generator=g) for s in (5, 3, 2)]
    pos = [torch.rand(2, s, s, generator=g) > 0.5 for s in (5, 3, 2)]
    pos[2][:] = False
    out, images = gather_kernels(maps, pos, return_image_index=True)
    ref, ref_images = [], []
    for kmap, p in zip(maps, pos):
        for n in range(kmap.shape[0]):
            for i in range(kmap.shape[2]):
                for j in range(kmap.shape[3]):
                    if p[n, i, j]:
                        ref.append(kmap[n, :, i, j])
                        ref_images.append(n)
    assert torch.equal(out, torch.stack(ref)) and images.tolist() == ref_images
    flat = gather_kernels(maps, [p.flatten(1) for p in pos])
    assert torch.equal(flat, out)
    # one image: the published inference order (levels' (S*S, E) maps concatenated)
    one = gather_kernels([m[:1] for m in maps], [torch.ones(1, m.shape[2], m.shape[3])
                                                 for m in maps])
    assert torch.equal(one, torch.cat([m[0].permute(1, 2, 0).reshape(-1, 4) for m in maps]))


def test_dynamic_masks_vs_einsum():
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(6, 7, 9, generator=g, dtype=torch.float64)
    kernels = torch.randn(4, 6, generator=g, dtype=torch.float64)
    out = dynamic_masks(feats, kernels)
    assert out.shape == (4, 7, 9)
    assert torch.allclose(out, torch.einsum("me,ehw->mhw", kernels, feats))
    loop = torch.stack([sum(kernels[m, e] * feats[e] for e in range(6)) for m in range(4)])
    assert torch.allclose(out, loop)
    assert dynamic_masks(feats, kernels[:0]).shape == (0, 7, 9)
    # k = 3: the (E, k, k) layout against unfold
    k3 = torch.randn(4, 6 * 9, generator=g, dtype=torch.float64)
    cols = F.unfold(feats[None], 3, padding=1)[0]  # (E * 9, h * w)
    assert torch.allclose(dynamic_masks(feats, k3, kernel_size=3), (k3 @ cols).view(4, 7, 9))
    with pytest.raises(ValueError):
        dynamic_masks(feats, k3)


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    head = SOLOv2InstanceHead(in_channels=32, num_classes=3, seg_feat_channels=32,
                              stacked_convs=2, ins_out_channels=32, num_grids=(6, 5, 4, 3, 2))
    mask_head = SOLOv2MaskFeatureHead(in_channels=32, feat_channels=32, out_channels=32)
    feats = _feats([(16, 16), (8, 8), (4, 4), (2, 2), (1, 1)], channels=32, n=2,
                   requires_grad=True)
    cates, kernels = head(feats)
    mask_feats = mask_head(feats[:4])
    total = sum(c.sum() for c in cates) + sum(k.sum() for k in kernels) + mask_feats.sum()
    total.backward()
    for name, p in [*head.named_parameters(), *mask_head.named_parameters()]:
        assert p.grad is not None and float(p.grad.abs().sum()) > 0, name
    assert all(float(f.grad.abs().sum()) > 0 for f in feats)
