"""CARAFE reassembly, upsampler and the registered CARAFE FPN backbone (tiny, float64)."""
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_backbone
from detectron2.modeling.backbone.fpn import build_resnet_fpn_backbone

from rs_detectron2.config import add_rs_config
from rs_detectron2.modeling.backbone import (
    CARAFE,
    CARAFEFPN,
    CARAFEUpsample,
    carafe,
)

TOL = dict(rtol=1e-6, atol=1e-6)


def reference_carafe(features, kernels, k, groups, s):
    """Slow reference: explicit loops over output pixels and the k x k neighbourhood of
    the source pixel (i // s, j // s), zero outside the input; kernel channel
    g*k*k + u*k + v (mmcv's layout)."""
    n, c, h, w = features.shape
    out = torch.zeros(n, c, s * h, s * w, dtype=features.dtype)
    per_group = c // groups
    for i in range(s * h):
        for j in range(s * w):
            for u in range(k):
                y = i // s + u - k // 2
                if not 0 <= y < h:
                    continue
                for v in range(k):
                    x = j // s + v - k // 2
                    if not 0 <= x < w:
                        continue
                    for g in range(groups):
                        weight = kernels[:, g * k * k + u * k + v, i, j]  # (n,)
                        block = features[:, g * per_group:(g + 1) * per_group, y, x]  # (n, c/g)
                        out[:, g * per_group:(g + 1) * per_group, i, j] += weight[:, None] * block
    return out


@pytest.mark.parametrize("k", [3, 5])
@pytest.mark.parametrize("groups", [1, 2])
def test_carafe_matches_reference(k, groups):
    torch.manual_seed(0)
    n, c, h, w, s = 2, 4, 3, 5, 2
    features = torch.randn(n, c, h, w, dtype=torch.float64)
    kernels = torch.randn(n, groups * k * k, s * h, s * w, dtype=torch.float64)
    expected = reference_carafe(features, kernels, k, groups, s)
    torch.testing.assert_close(carafe(features, kernels, k, groups, s), expected, **TOL)
    torch.testing.assert_close(CARAFE(k, groups, s)(features, kernels), expected, **TOL)


@pytest.mark.parametrize("k,groups,s", [(5, 1, 2), (3, 2, 2), (3, 1, 3)])
def test_carafe_gradients_match_the_reference(k, groups, s):
    """The hand-written backward pass against autograd through the loop reference, and
    against finite differences."""
    torch.manual_seed(1)
    n, c, h, w = 2, 4, 3, 4
    features = torch.randn(n, c, h, w, dtype=torch.float64, requires_grad=True)
    kernels = torch.randn(n, groups * k * k, s * h, s * w, dtype=torch.float64, requires_grad=True)
    grad = torch.randn(n, c, s * h, s * w, dtype=torch.float64)
    ours = torch.autograd.grad(carafe(features, kernels, k, groups, s), (features, kernels), grad)
    ref = torch.autograd.grad(reference_carafe(features, kernels, k, groups, s),
                              (features, kernels), grad)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, **TOL)
    assert torch.autograd.gradcheck(lambda f, kk: carafe(f, kk, k, groups, s), (features, kernels))


def test_carafe_rejects_bad_kernels():
    features = torch.zeros(1, 4, 3, 3)
    with pytest.raises(ValueError):
        carafe(features, torch.zeros(1, 25, 5, 6), 5, 1, 2)
    with pytest.raises(ValueError):
        carafe(features, torch.zeros(1, 16, 6, 6), 4, 1, 2)


def test_upsample_shape_and_normalised_kernels():
    torch.manual_seed(0)
    up = CARAFEUpsample(6, up_kernel=5, groups=2, compressed_channels=4).double()
    # Larger encoder weights than the init so that the kernels are far from uniform.
    torch.nn.init.normal_(up.content_encoder.weight, std=0.5)
    x = torch.randn(2, 6, 4, 7, dtype=torch.float64)
    y = up(x)
    assert y.shape == (2, 6, 8, 14)
    kernels = up.kernels(x)
    assert kernels.shape == (2, 2 * 25, 8, 14)
    assert (kernels >= 0).all()
    sums = kernels.view(2, 2, 25, 8, 14).sum(2)
    torch.testing.assert_close(sums, torch.ones(2, 2, 8, 14, dtype=torch.float64), **TOL)
    # A constant input maps to the same constant wherever the 5x5 window is inside the input.
    const = torch.full((1, 6, 6, 7), 3.0, dtype=torch.float64)
    out = up(const)
    inner = torch.full((1, 6, 4, 6), 3.0, dtype=torch.float64)
    torch.testing.assert_close(out[:, :, 4:8, 4:10], inner, **TOL)
    # ... and less at the border, where the window reaches the zero padding.
    assert (out[:, :, 0, :] < 3.0).all()


def test_upsample_init_matches_mmcv():
    up = CARAFEUpsample(256)
    assert up.channel_compressor.weight.shape == (64, 256, 1, 1)
    assert up.content_encoder.weight.shape == (100, 64, 3, 3)
    assert up.content_encoder.weight.std().item() < 0.002
    assert up.content_encoder.bias.abs().max().item() == 0.0
    assert up.channel_compressor.bias.abs().max().item() == 0.0
    bound = (6.0 / (256 + 64)) ** 0.5  # xavier-uniform
    assert up.channel_compressor.weight.abs().max().item() <= bound


def test_gradients_reach_encoder_and_compressor():
    torch.manual_seed(0)
    up = CARAFEUpsample(4, up_kernel=3, compressed_channels=3).double()
    x = torch.randn(1, 4, 3, 4, dtype=torch.float64, requires_grad=True)
    (up(x) * torch.randn(1, 4, 6, 8, dtype=torch.float64)).sum().backward()
    encoder, compressor = up.content_encoder, up.channel_compressor
    for param in (encoder.weight, encoder.bias, compressor.weight, compressor.bias):
        assert param.grad is not None and param.grad.abs().sum() > 0
    assert x.grad.abs().sum() > 0


def _cfg(backbone_name):
    cfg = get_cfg()
    add_rs_config(cfg)
    cfg.MODEL.BACKBONE.NAME = backbone_name
    cfg.MODEL.RESNETS.DEPTH = 50
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.FPN.IN_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.DEVICE = "cpu"
    return cfg


def test_config_keys_have_published_values():
    cfg = _cfg("build_resnet_carafe_fpn_backbone")
    assert cfg.MODEL.CARAFE.UP_KERNEL == 5
    assert cfg.MODEL.CARAFE.ENCODER_KERNEL == 3
    assert cfg.MODEL.CARAFE.COMPRESSED_CHANNELS == 64
    assert cfg.MODEL.CARAFE.GROUPS == 1


def test_registered_backbone_matches_detectron2_fpn():
    torch.manual_seed(0)
    cfg = _cfg("build_resnet_carafe_fpn_backbone")
    ours = build_backbone(cfg).eval()
    assert isinstance(ours, CARAFEFPN)
    theirs = build_resnet_fpn_backbone(cfg, ShapeSpec(channels=3)).eval()
    assert ours.output_shape() == theirs.output_shape()

    our_names = {name for name, _ in ours.named_parameters()}
    their_names = {name for name, _ in theirs.named_parameters()}
    assert their_names <= our_names
    extra = our_names - their_names
    assert {name.split(".")[0] for name in extra} == {"fpn_carafe2", "fpn_carafe3", "fpn_carafe4"}

    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        out, ref = ours(x), theirs(x)
    assert list(out) == ["p2", "p3", "p4", "p5", "p6"] == list(ref)
    for name in ref:
        assert out[name].shape == ref[name].shape, name


def test_carafe_fpn_equals_fpn_when_upsampling_is_nearest():
    """With the same weights and the upsamplers swapped for nearest interpolation,
    CARAFEFPN.forward is exactly detectron2's FPN.forward (checks the re-implemented loop)."""
    torch.manual_seed(0)
    cfg = _cfg("build_resnet_carafe_fpn_backbone")
    cfg.MODEL.RESNETS.DEPTH = 18
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    cfg.MODEL.FPN.OUT_CHANNELS = 8
    cfg.MODEL.FPN.FUSE_TYPE = "avg"
    ours = build_backbone(cfg).eval()
    theirs = build_resnet_fpn_backbone(cfg, ShapeSpec(channels=3)).eval()
    theirs.load_state_dict(ours.state_dict(), strict=False)

    class Nearest(torch.nn.Module):
        def forward(self, t):
            return torch.nn.functional.interpolate(t, scale_factor=2.0, mode="nearest")

    ours.upsamplers = [Nearest() for _ in ours.upsamplers]
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        out, ref = ours(x), theirs(x)
    for name in ref:
        torch.testing.assert_close(out[name], ref[name], rtol=0, atol=0)
