"""Torchvision-backed DCN / DCNv2 ResNet (rs_detectron2.modeling.backbone.deform_resnet)."""
import math

import pytest
import torch
import torch.nn.functional as F
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_backbone
from detectron2.modeling.backbone import resnet as d2_resnet
from detectron2.modeling.backbone.resnet import BottleneckBlock, build_resnet_backbone

from rs_detectron2.config import add_rs_config
from rs_detectron2.modeling.backbone import deform_resnet
from rs_detectron2.modeling.backbone.deform_resnet import (
    TorchvisionDeformBottleneckBlock,
    TorchvisionDeformConv,
    TorchvisionModulatedDeformConv,
    build_resnet_deform_backbone,
    check_deformable_backbone,
    detectron2_has_compiled_ops,
)

TOL = 1e-6


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: one intra-op thread is faster and leaves the other cores alone."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _bilinear(img: torch.Tensor, y: float, x: float) -> torch.Tensor:
    """img (C, H, W) sampled at (y, x), zero outside the image."""
    _, height, width = img.shape
    y0, x0 = math.floor(y), math.floor(x)
    value = img.new_zeros(img.shape[0])
    for yy, wy in ((y0, 1 - (y - y0)), (y0 + 1, y - y0)):
        for xx, wx in ((x0, 1 - (x - x0)), (x0 + 1, x - x0)):
            if 0 <= yy < height and 0 <= xx < width:
                value = value + wy * wx * img[:, yy, xx]
    return value


def _reference_dcn(x, offset, mask, weight, stride, padding, dilation, groups, deform_groups):
    """y(p) = sum_k w_k * x(p + p_k + dp_k) * m_k with explicit loops, in detectron2's
    layout: offset channel g*2K + 2k is dy, g*2K + 2k + 1 is dx; mask channel g*K + k."""
    n, c, _, _ = x.shape
    out_c, _, kh, kw = weight.shape
    taps = kh * kw
    ho, wo = offset.shape[2:]
    cpg = c // deform_groups
    cols = x.new_zeros(n, c, taps, ho, wo)
    for b in range(n):
        for g in range(deform_groups):
            chans = slice(g * cpg, (g + 1) * cpg)
            for oy in range(ho):
                for ox in range(wo):
                    for i in range(kh):
                        for j in range(kw):
                            k = i * kw + j
                            dy = offset[b, g * 2 * taps + 2 * k, oy, ox].item()
                            dx = offset[b, g * 2 * taps + 2 * k + 1, oy, ox].item()
                            m = 1.0 if mask is None else mask[b, g * taps + k, oy, ox]
                            y = oy * stride - padding + i * dilation + dy
                            xx = ox * stride - padding + j * dilation + dx
                            cols[b, chans, k, oy, ox] = _bilinear(x[b, chans], y, xx) * m
    out = x.new_zeros(n, out_c, ho, wo)
    ipg, opg = c // groups, out_c // groups
    for grp in range(groups):
        w = weight[grp * opg : (grp + 1) * opg].reshape(opg, ipg, taps)
        col = cols[:, grp * ipg : (grp + 1) * ipg]
        out[:, grp * opg : (grp + 1) * opg] = torch.einsum("oik,nikhw->nohw", w, col)
    return out


def _out_size(size, stride):
    return (size + 2 - 3) // stride + 1


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("modulated", [False, True])
def test_zero_offsets_unit_mask_is_plain_conv(stride, groups, modulated):
    torch.manual_seed(0)
    cls = TorchvisionModulatedDeformConv if modulated else TorchvisionDeformConv
    conv = cls(4, 6, 3, stride=stride, padding=1, groups=groups, deformable_groups=2, bias=False)
    conv = conv.double()
    x = torch.randn(2, 4, 7, 6, dtype=torch.float64)
    ho, wo = _out_size(7, stride), _out_size(6, stride)
    offset = torch.zeros(2, 2 * 2 * 9, ho, wo, dtype=torch.float64)
    mask = torch.ones(2, 2 * 9, ho, wo, dtype=torch.float64)
    args = (x, offset, mask) if modulated else (x, offset)
    expected = F.conv2d(x, conv.weight, stride=stride, padding=1, dilation=1, groups=groups)
    torch.testing.assert_close(conv(*args), expected, atol=TOL, rtol=TOL)


@pytest.mark.parametrize("deform_groups", [1, 4])
@pytest.mark.parametrize("modulated", [False, True])
@pytest.mark.parametrize("stride,groups", [(1, 1), (2, 2)])
def test_random_offsets_match_loop_reference(deform_groups, modulated, stride, groups):
    torch.manual_seed(1)
    cls = TorchvisionModulatedDeformConv if modulated else TorchvisionDeformConv
    conv = cls(
        4, 4, 3, stride=stride, padding=1, groups=groups, deformable_groups=deform_groups
    ).double()
    if modulated:  # detectron2's block builds it bias-free, but the module takes one
        conv.bias.data.normal_()
    x = torch.randn(1, 4, 5, 5, dtype=torch.float64)
    ho = wo = _out_size(5, stride)
    # Offsets up to +-2.5 px: many taps land between pixels and some fall off the image.
    offset = (torch.rand(1, 2 * deform_groups * 9, ho, wo, dtype=torch.float64) - 0.5) * 5
    mask = torch.rand(1, deform_groups * 9, ho, wo, dtype=torch.float64) if modulated else None
    got = conv(x, offset, mask) if modulated else conv(x, offset)
    expected = _reference_dcn(x, offset, mask, conv.weight.detach(), stride, 1, 1, groups,
                              deform_groups)
    if modulated:
        expected = expected + conv.bias.detach().view(1, -1, 1, 1)
    torch.testing.assert_close(got, expected, atol=TOL, rtol=TOL)


def test_gradients_of_offsets_and_mask_match_finite_differences():
    """Directional derivatives of torchvision's backward vs central differences."""
    torch.manual_seed(2)
    conv = TorchvisionModulatedDeformConv(2, 2, 3, padding=1, deformable_groups=2).double()
    x = torch.randn(1, 2, 3, 3, dtype=torch.float64)
    offset = ((torch.rand(1, 36, 3, 3, dtype=torch.float64) - 0.5) * 1.8).requires_grad_()
    mask = torch.rand(1, 18, 3, 3, dtype=torch.float64, requires_grad=True)
    probe = torch.randn(1, 2, 3, 3, dtype=torch.float64)

    def loss(o, m):
        return (conv(x, o, m) * probe).sum()

    g_offset, g_mask = torch.autograd.grad(loss(offset, mask), (offset, mask))
    assert g_offset.abs().sum() > 0 and g_mask.abs().sum() > 0
    eps = 1e-6
    with torch.no_grad():
        for _ in range(3):
            v_o, v_m = torch.randn_like(offset), torch.randn_like(mask)
            numeric = (loss(offset + eps * v_o, mask + eps * v_m)
                       - loss(offset - eps * v_o, mask - eps * v_m)) / (2 * eps)
            analytic = (g_offset * v_o).sum() + (g_mask * v_m).sum()
            assert abs(numeric - analytic) < TOL * max(1.0, abs(analytic))


def _block(modulated, deform_groups=2, num_groups=1, norm="FrozenBN"):
    return TorchvisionDeformBottleneckBlock(
        8, 16, bottleneck_channels=8, stride=2, num_groups=num_groups, norm=norm,
        deform_modulated=modulated, deform_num_groups=deform_groups,
    ).double()


@pytest.mark.parametrize("modulated", [False, True])
def test_block_at_init_is_detectron2_bottleneck(modulated):
    """detectron2 zero-inits conv2_offset: DCNv1 is then the plain conv, DCNv2 the plain
    conv times sigmoid(0) = 0.5. Loading a BottleneckBlock's weights checks the names."""
    torch.manual_seed(3)
    block = _block(modulated, num_groups=2)
    plain = BottleneckBlock(8, 16, bottleneck_channels=8, stride=2, num_groups=2,
                            norm="FrozenBN").double()
    for buf in plain.buffers():
        buf.uniform_(0.5, 1.5)
    state = plain.state_dict()
    missing, unexpected = block.load_state_dict(state, strict=False)
    assert sorted(missing) == ["conv2_offset.bias", "conv2_offset.weight"] and not unexpected
    assert not block.conv2_offset.weight.any() and not block.conv2_offset.bias.any()
    if modulated:
        plain.conv2.weight.data.mul_(0.5)
    x = torch.randn(1, 8, 6, 6, dtype=torch.float64)
    torch.testing.assert_close(block(x), plain(x), atol=TOL, rtol=TOL)


@pytest.mark.parametrize("modulated", [False, True])
def test_gradients_reach_offsets_and_mask_through_the_block(modulated):
    torch.manual_seed(4)
    block = _block(modulated)
    torch.nn.init.normal_(block.conv2_offset.weight, std=0.3)
    torch.nn.init.normal_(block.conv2_offset.bias, std=0.3)
    x = torch.randn(1, 8, 6, 6, dtype=torch.float64)
    block(x).square().sum().backward()
    grad = block.conv2_offset.weight.grad.view(3 if modulated else 2, -1)
    assert grad[0].abs().sum() > 0 and grad[1].abs().sum() > 0  # the offset channels
    if modulated:
        assert grad[2].abs().sum() > 0  # the mask channels
    assert block.conv2_offset.bias.grad.abs().sum() > 0


def _dcn_cfg(depth=50, num_groups=1, width_per_group=64, name="build_resnet_deform_fpn_backbone"):
    cfg = get_cfg()
    add_rs_config(cfg)
    cfg.MODEL.BACKBONE.NAME = name
    cfg.MODEL.RESNETS.DEPTH = depth
    cfg.MODEL.RESNETS.NUM_GROUPS = num_groups
    cfg.MODEL.RESNETS.WIDTH_PER_GROUP = width_per_group
    cfg.MODEL.RESNETS.STRIDE_IN_1X1 = num_groups == 1
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.FPN.IN_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.RESNETS.DEFORM_ON_PER_STAGE = [False, True, True, True]
    cfg.MODEL.RESNETS.DEFORM_MODULATED = True
    cfg.MODEL.RESNETS.DEFORM_NUM_GROUPS = 4
    return cfg


# The keys detectron2's DeformBottleneckBlock source creates (a first block, FrozenBN).
_FROZEN_BN = ("weight", "bias", "running_mean", "running_var")
_D2_DEFORM_BLOCK_KEYS = sorted(
    [f"{conv}.weight" for conv in ("shortcut", "conv1", "conv2", "conv3")]
    + [f"{conv}.norm.{b}" for conv in ("shortcut", "conv1", "conv2", "conv3") for b in _FROZEN_BN]
    + ["conv2_offset.weight", "conv2_offset.bias"]
)


@pytest.mark.parametrize("depth,num_groups,width", [(50, 1, 64), (50, 4, 4)])
def test_backbone_builds_runs_and_has_detectron2_keys(depth, num_groups, width):
    torch.manual_seed(5)
    cfg = _dcn_cfg(depth, num_groups, width)
    model = build_backbone(cfg)
    resnet = model.bottom_up
    assert not isinstance(resnet.res2[0], TorchvisionDeformBottleneckBlock)
    for stage in (resnet.res3, resnet.res4, resnet.res5):
        for block in stage:
            assert isinstance(block, d2_resnet.DeformBottleneckBlock)
            assert isinstance(block.conv2, TorchvisionModulatedDeformConv)
            assert block.conv2.deformable_groups == 4 and block.conv2.groups == num_groups
            assert block.conv2_offset.out_channels == 27 * 4
            assert not block.conv2_offset.weight.any()  # detectron2's zero init
    # detectron2's builders are left as they were (its DeformConv is a dummy without _C).
    assert d2_resnet.DeformBottleneckBlock is not TorchvisionDeformBottleneckBlock
    assert d2_resnet.ModulatedDeformConv is not TorchvisionModulatedDeformConv

    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 64))
    assert {k: tuple(v.shape[1:]) for k, v in out.items()} == {
        "p2": (256, 16, 16), "p3": (256, 8, 8), "p4": (256, 4, 4), "p5": (256, 2, 2),
        "p6": (256, 1, 1),
    }

    # detectron2's DCN ResNet cannot be constructed without _C, so its state_dict is derived:
    # its plain ResNet (same cfg, no DCN) plus conv2_offset in every res3-res5 block, which
    # is what DeformBottleneckBlock adds to BottleneckBlock; the first block is also checked
    # against the names in DeformBottleneckBlock's source.
    plain_cfg = cfg.clone()
    plain_cfg.MODEL.RESNETS.DEFORM_ON_PER_STAGE = [False] * 4
    plain = build_resnet_backbone(plain_cfg, ShapeSpec(channels=3)).state_dict()
    d2_state = {f"bottom_up.{k}": v for k, v in plain.items()}
    for key, value in list(d2_state.items()):
        if key.endswith(".conv2.weight") and ".res2." not in key:
            prefix = key[: -len("conv2.weight")]
            d2_state[prefix + "conv2_offset.weight"] = value.new_zeros(108, value.shape[0], 3, 3)
            d2_state[prefix + "conv2_offset.bias"] = value.new_zeros(108)
    d2_state.update({k: v for k, v in model.state_dict().items() if not k.startswith("bottom_up.")})
    ours = model.state_dict()
    assert sorted(ours) == sorted(d2_state)
    assert all(ours[k].shape == d2_state[k].shape for k in ours)
    assert sorted(k[len("res3.0."):] for k in resnet.state_dict() if k.startswith("res3.0.")) \
        == _D2_DEFORM_BLOCK_KEYS
    model.load_state_dict(d2_state, strict=True)


def test_dcn_v1_resnet_backbone_without_fpn():
    cfg = _dcn_cfg(name="build_resnet_deform_backbone")
    cfg.MODEL.RESNETS.DEFORM_MODULATED = False
    cfg.MODEL.RESNETS.DEFORM_NUM_GROUPS = 1
    cfg.MODEL.RESNETS.DEPTH, cfg.MODEL.RESNETS.WIDTH_PER_GROUP = 50, 8  # narrow: fast
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 32
    model = build_resnet_deform_backbone(cfg, ShapeSpec(channels=3))
    assert isinstance(model.res5[0].conv2, TorchvisionDeformConv)
    assert model.res5[0].conv2_offset.out_channels == 18
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 32))["res5"].shape == (1, 256, 1, 1)


def test_dcn_resnet_with_carafe_fpn(monkeypatch):
    """The published R-101-DCN / X-101-DCN "+" models: DCN blocks under the CARAFE FPN."""
    cfg = _dcn_cfg(name="build_resnet_deform_carafe_fpn_backbone")
    cfg.MODEL.RESNETS.WIDTH_PER_GROUP, cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 8, 32  # narrow
    cfg.MODEL.FPN.OUT_CHANNELS = 32
    model = build_backbone(cfg)
    assert isinstance(model.bottom_up.res4[0].conv2, TorchvisionModulatedDeformConv)
    assert {"fpn_carafe2", "fpn_carafe3", "fpn_carafe4"} <= {n for n, _ in model.named_children()}
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 64))
    assert out["p2"].shape == (1, 32, 16, 16) and out["p6"].shape == (1, 32, 1, 1)
    cfg.MODEL.BACKBONE.NAME = "build_resnet_carafe_fpn_backbone"
    monkeypatch.setattr(deform_resnet, "detectron2_has_compiled_ops", lambda: False)
    with pytest.raises(RuntimeError, match="'build_resnet_deform_carafe_fpn_backbone'"):
        check_deformable_backbone(cfg)


def test_check_deformable_backbone(monkeypatch):
    cfg = _dcn_cfg(name="build_resnet_fpn_backbone")
    monkeypatch.setattr(deform_resnet, "detectron2_has_compiled_ops", lambda: False)
    with pytest.raises(RuntimeError, match="build_resnet_deform_fpn_backbone"):
        check_deformable_backbone(cfg)
    cfg.MODEL.BACKBONE.NAME = "build_resnet_backbone"
    with pytest.raises(RuntimeError, match="'build_resnet_deform_backbone'"):
        check_deformable_backbone(cfg)
    for name in ("build_resnet_deform_fpn_backbone", "build_resnet_deform_backbone"):
        cfg.MODEL.BACKBONE.NAME = name
        check_deformable_backbone(cfg)
    cfg.MODEL.BACKBONE.NAME = "build_resnet_fpn_backbone"
    cfg.MODEL.RESNETS.DEFORM_ON_PER_STAGE = [False] * 4
    check_deformable_backbone(cfg)
    cfg.MODEL.RESNETS.DEFORM_ON_PER_STAGE = [False, True, True, True]
    monkeypatch.setattr(deform_resnet, "detectron2_has_compiled_ops", lambda: True)
    check_deformable_backbone(cfg)


@pytest.mark.skipif(detectron2_has_compiled_ops(), reason="detectron2._C is installed")
def test_detectron2_builder_fails_without_c_and_check_says_what_to_do():
    cfg = _dcn_cfg(name="build_resnet_fpn_backbone")
    with pytest.raises(ImportError):
        build_backbone(cfg)
    with pytest.raises(RuntimeError, match="MODEL.BACKBONE.NAME to 'build_resnet_deform_fpn"):
        check_deformable_backbone(cfg)
