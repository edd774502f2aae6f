"""The published RS-ATSS backbone: torchvision's ResNet in detectron2 (key conversion, the
conversion tool, frozen-statistics BN with a trainable affine, the config)."""
import os
import pickle
import subprocess
import sys

import pytest
import torch
import torchvision
from torch import nn

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.layers import FrozenBatchNorm2d, ShapeSpec
from detectron2.modeling import build_model

from rs_detectron2.config import add_rs_config
from rs_detectron2.modeling.backbone import (
    FrozenStatisticsBatchNorm2d,
    build_retinanet_torchvision_resnet_p3p7_fpn_backbone,
    convert_torchvision_resnet_state_dict,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = "COCO-Detection/rs_atss_R_50_FPN_1x_torchvision.yaml"
TOOL = os.path.join(ROOT, "tools", "convert_torchvision_to_d2.py")
STAGES = ("res2", "res3", "res4", "res5")


# the torchvision-backbone configs of the published one-stage models and their base configs
TORCHVISION_CONFIGS = {CONFIG: "COCO-Detection/rs_atss_R_50_FPN_1x.yaml",
                       "COCO-Detection/rs_paa_R_50_FPN_1x_torchvision.yaml":
                           "COCO-Detection/rs_paa_R_50_FPN_1x.yaml"}


def load_cfg(depth=50, config=CONFIG, **overrides):
    cfg = get_cfg()
    add_rs_config(cfg)
    cfg.merge_from_file(os.path.join(ROOT, "configs", config))
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.RESNETS.DEPTH = depth
    if depth in (18, 34):
        cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    for key, value in overrides.items():
        node = cfg
        *path, last = key.split(".")
        for name in path:
            node = getattr(node, name)
        setattr(node, last, value)
    return cfg


def build_bottom_up(cfg):
    return build_retinanet_torchvision_resnet_p3p7_fpn_backbone(cfg, ShapeSpec(channels=3)).bottom_up


def randomise_bn(model: nn.Module, seed: int = 0) -> None:
    """Random running statistics and affine in every BN, so the parity checks see them."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.1)


def torchvision_stages(model, x):
    x = model.maxpool(model.relu(model.bn1(model.conv1(x))))
    outputs = {}
    for stage, layer in zip(STAGES, (model.layer1, model.layer2, model.layer3, model.layer4)):
        x = layer(x)
        outputs[stage] = x
    return outputs


def assert_close_relative(actual, expected, rel=1e-4):
    scale = expected.abs().max().item()
    err = (actual - expected).abs().max().item()
    assert err <= rel * scale, f"max abs error {err:.3g} > {rel} x max |expected| {scale:.3g}"


@pytest.fixture(scope="module")
def torchvision_r50():
    torch.manual_seed(0)
    model = torchvision.models.resnet50(weights=None)
    with torch.no_grad():
        randomise_bn(model)
    return model.eval()


# ------------------------------------------------------------------ (a) parity
def test_converted_resnet50_matches_torchvision(torchvision_r50):
    """res2..res5 of detectron2's ResNet (the builder's, stride in the 3x3 conv) with the
    converted weights are torchvision's layer1..layer4, in eval mode and (frozen
    statistics) in train mode too."""
    cfg = load_cfg(**{"MODEL.RESNETS.OUT_FEATURES": list(STAGES), "MODEL.BACKBONE.FREEZE_AT": 0})
    bottom_up = build_bottom_up(cfg)
    bottom_up.load_state_dict(convert_torchvision_resnet_state_dict(torchvision_r50.state_dict()),
                              strict=True)
    x = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = torchvision_stages(torchvision_r50, x)
        actual_eval = bottom_up.eval()(x)
        actual_train = bottom_up.train()(x)
    for stage in STAGES:
        assert actual_eval[stage].shape == expected[stage].shape, stage
        assert_close_relative(actual_eval[stage], expected[stage])
        assert_close_relative(actual_train[stage], expected[stage])


def test_conversion_keys():
    state_dict = torchvision.models.resnet50(weights=None).state_dict()
    converted = convert_torchvision_resnet_state_dict(state_dict)
    assert "stem.conv1.weight" in converted and "stem.conv1.norm.running_var" in converted
    assert "res2.0.shortcut.weight" in converted and "res2.0.shortcut.norm.bias" in converted
    assert "res5.2.conv3.norm.weight" in converted
    assert not [k for k in converted if k.startswith("fc")]
    assert converted["res4.5.conv2.weight"] is state_dict["layer3.5.conv2.weight"]
    # Old torchvision checkpoints have no num_batches_tracked: filled in.
    old = {k: v for k, v in state_dict.items() if not k.endswith("num_batches_tracked")}
    assert set(convert_torchvision_resnet_state_dict(old)) == set(converted)
    with pytest.raises(ValueError, match="not a key of a torchvision ResNet"):
        convert_torchvision_resnet_state_dict({"backbone.body.conv1.weight": torch.zeros(1)})


# ---------------------------------------------- (b) frozen statistics, trained affine
def test_bn_uses_running_statistics_and_trains_its_affine():
    cfg = load_cfg()  # FREEZE_AT 2: stem + res2 frozen
    bottom_up = build_bottom_up(cfg)
    with torch.no_grad():
        randomise_bn(bottom_up)
    norms = {name: m for name, m in bottom_up.named_modules()
             if isinstance(m, (nn.BatchNorm2d, FrozenBatchNorm2d))}
    frozen = {n for n in norms if n.startswith(("stem.", "res2."))}
    assert frozen and all(isinstance(norms[n], FrozenBatchNorm2d) for n in frozen)
    trained = [m for n, m in norms.items() if n not in frozen]
    assert len(trained) == 3 * (4 + 6 + 3) + 3  # 3 per bottleneck + 1 shortcut per stage
    assert all(type(m) is FrozenStatisticsBatchNorm2d and m.weight.requires_grad
               and m.bias.requires_grad for m in trained)
    assert not [p for n, p in bottom_up.named_parameters()
                if n.startswith(("stem.", "res2.")) and p.requires_grad]

    stats = {n: (m.running_mean.clone(), m.running_var.clone())
             for n, m in norms.items() if n not in frozen}
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = bottom_up.eval()(x)
    outputs = bottom_up.train()(x)
    for name in outputs:
        assert_close_relative(outputs[name].detach(), expected[name], rel=1e-5)
    sum(o.sum() for o in outputs.values()).backward()
    for name, m in norms.items():
        if name in frozen:
            continue
        assert torch.equal(m.running_mean, stats[name][0]), name
        assert torch.equal(m.running_var, stats[name][1]), name
        assert m.weight.grad is not None and m.weight.grad.abs().sum() > 0, name
        assert m.bias.grad is not None and m.bias.grad.abs().sum() > 0, name


def test_frozen_statistics_bn_module():
    bn = nn.BatchNorm2d(4)
    with torch.no_grad():
        randomise_bn(bn)
    converted = FrozenStatisticsBatchNorm2d.convert(nn.Sequential(bn))[0]
    assert type(converted) is FrozenStatisticsBatchNorm2d
    x = torch.randn(3, 4, 5, 5)
    reference = bn.eval()(x)
    converted.train()
    assert torch.allclose(converted(x), reference, atol=1e-6)
    assert torch.equal(converted.running_mean, bn.running_mean)
    # detectron2 counts it as a norm layer (WEIGHT_DECAY_NORM) and freezes it as BN.
    assert isinstance(converted, nn.BatchNorm2d)
    assert isinstance(FrozenBatchNorm2d.convert_frozen_batchnorm(converted), FrozenBatchNorm2d)


@pytest.mark.parametrize("freeze_at,frozen_stages", [(0, ()), (3, ("stem", "res2", "res3"))])
def test_freeze_at(freeze_at, frozen_stages):
    bottom_up = build_bottom_up(load_cfg(depth=18, **{"MODEL.BACKBONE.FREEZE_AT": freeze_at}))
    for name, m in bottom_up.named_modules():
        if isinstance(m, (nn.BatchNorm2d, FrozenBatchNorm2d)):
            stage = name.split(".")[0]
            expected = FrozenBatchNorm2d if stage in frozen_stages else FrozenStatisticsBatchNorm2d
            assert type(m) is expected, name


def test_builder_needs_bn():
    with pytest.raises(ValueError, match="NORM"):
        build_bottom_up(load_cfg(depth=18, **{"MODEL.RESNETS.NORM": "FrozenBN"}))


# ---------------------------------------------------------------- (c) the tool
def test_tool_converts_a_checkpoint_that_detectron2_loads(tmp_path):
    torch.manual_seed(3)
    source = torchvision.models.resnet18(weights=None)
    with torch.no_grad():
        randomise_bn(source)
    source_path, output = tmp_path / "resnet18.pth", tmp_path / "out" / "torchvision-R-18.pkl"
    torch.save(source.state_dict(), source_path)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    help_text = subprocess.run([sys.executable, TOOL, "--help"], env=env, check=True,
                               capture_output=True, text=True).stdout
    assert "convert_torchvision_to_d2.py resnet50-0676ba61.pth torchvision-R-50.pkl" in help_text
    subprocess.run([sys.executable, TOOL, str(source_path), str(output)], env=env, check=True,
                   capture_output=True, text=True)

    with open(output, "rb") as f:
        data = pickle.load(f)
    assert data["__author__"] == "torchvision" and data["matching_heuristics"] is True

    model = build_model(load_cfg(depth=18))
    checkpointer = DetectionCheckpointer(model)
    incompatible = checkpointer._load_model(checkpointer._load_file(str(output)))
    prefix = "backbone.bottom_up."
    assert not [k for k in incompatible.missing_keys if k.startswith(prefix)]
    assert not incompatible.unexpected_keys and not incompatible.incorrect_shapes
    loaded = model.state_dict()
    for key, value in convert_torchvision_resnet_state_dict(source.state_dict()).items():
        assert torch.equal(loaded[prefix + key], value), key


# -------------------------------------------------------------- (d) the config
@pytest.mark.parametrize("config", sorted(TORCHVISION_CONFIGS))
def test_config_builds_and_runs(config):
    with open(os.path.join(ROOT, "configs", config)) as f, \
            open(os.path.join(ROOT, "configs", TORCHVISION_CONFIGS[config])) as g:
        assert f.readline() == g.readline()  # the paper's row
        assert "python tools/convert_torchvision_to_d2.py resnet50-0676ba61.pth " \
               "torchvision-R-50.pkl" in f.read()
    cfg = load_cfg(config=config)
    raw = get_cfg()
    add_rs_config(raw)
    raw.merge_from_file(os.path.join(ROOT, "configs", config))
    assert raw.MODEL.WEIGHTS == "torchvision-R-50.pkl"
    assert cfg.MODEL.BACKBONE.NAME == "build_retinanet_torchvision_resnet_p3p7_fpn_backbone"
    assert not cfg.MODEL.RESNETS.STRIDE_IN_1X1 and cfg.MODEL.RESNETS.NORM == "BN"
    assert cfg.INPUT.FORMAT == "RGB" and cfg.MODEL.BACKBONE.FREEZE_AT == 2
    assert list(cfg.MODEL.PIXEL_MEAN) == [123.675, 116.28, 103.53]
    assert list(cfg.MODEL.PIXEL_STD) == [58.395, 57.12, 57.375]
    assert cfg.MODEL.RS_RETINANET.HEAD_NAME == "RSATSSHead"

    model = build_model(cfg).eval()
    assert model.backbone.bottom_up.res3[0].conv2.stride == (2, 2)  # pytorch style
    assert type(model.backbone.bottom_up.res3[0].conv1.norm) is FrozenStatisticsBatchNorm2d
    with torch.no_grad():
        (output,) = model([{"image": torch.rand(3, 64, 96) * 255, "height": 64, "width": 96}])
    assert len(output["instances"]) <= cfg.TEST.DETECTIONS_PER_IMAGE
