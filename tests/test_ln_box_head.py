"""FastRCNNConvLNFCHead: detectron2's FC box head with a LayerNorm before each ReLU."""
import pytest
import torch
from torch import nn

from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling.roi_heads import FastRCNNConvFCHead, build_box_head

from rs_detectron2.config import add_rs_config
from rs_detectron2.modeling import FastRCNNConvLNFCHead


def head_cfg(name, num_conv=0, num_fc=2):
    cfg = get_cfg()
    add_rs_config(cfg)
    cfg.MODEL.ROI_BOX_HEAD.NAME = name
    cfg.MODEL.ROI_BOX_HEAD.NUM_CONV = num_conv
    cfg.MODEL.ROI_BOX_HEAD.CONV_DIM = 8
    cfg.MODEL.ROI_BOX_HEAD.NUM_FC = num_fc
    cfg.MODEL.ROI_BOX_HEAD.FC_DIM = 64
    return cfg


SHAPE = ShapeSpec(channels=8, height=7, width=7)


@pytest.mark.parametrize("num_conv,num_fc", [(0, 2), (0, 1), (2, 1)])
def test_layernorm_before_every_fc_relu(num_conv, num_fc):
    head = build_box_head(head_cfg("FastRCNNConvLNFCHead", num_conv, num_fc), SHAPE)
    assert isinstance(head, FastRCNNConvLNFCHead) and isinstance(head, FastRCNNConvFCHead)
    children = dict(head.named_children())
    for k in range(1, num_fc + 1):
        norm, relu = children[f"fc_relu{k}"]
        assert isinstance(norm, nn.LayerNorm) and norm.normalized_shape == (64,)
        assert isinstance(relu, nn.ReLU)
    # fc1 -> norm -> relu -> fc2 ... in that order
    names = [n for n, _ in head.named_children()]
    for k in range(1, num_fc + 1):
        assert names.index(f"fc{k}") + 1 == names.index(f"fc_relu{k}")
    out = head(torch.randn(5, 8, 7, 7))
    assert out.shape == (5, 64) and head.output_shape.channels == 64


def test_same_fc_parameters_as_detectron2s_head():
    """A checkpoint of the plain head loads into the LayerNorm head (the norms keep their
    initialisation) and the FC layers are built identically."""
    torch.manual_seed(0)
    plain = build_box_head(head_cfg("FastRCNNConvFCHead"), SHAPE)
    torch.manual_seed(0)
    ln = build_box_head(head_cfg("FastRCNNConvLNFCHead"), SHAPE)
    for name, p in plain.state_dict().items():
        assert torch.equal(p, ln.state_dict()[name])
    missing, unexpected = ln.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and sorted(missing) == [
        "fc_relu1.0.bias", "fc_relu1.0.weight", "fc_relu2.0.bias", "fc_relu2.0.weight"]


def test_units_cannot_all_die():
    """Push every fc2 pre-activation far below zero, as the stall does: the plain head's
    output is all zeros, the LayerNorm head keeps about half of its units active per RoI."""
    x = torch.rand(32, 8, 7, 7)
    for name in ("FastRCNNConvFCHead", "FastRCNNConvLNFCHead"):
        head = build_box_head(head_cfg(name), SHAPE)
        with torch.no_grad():
            head.fc2.weight.abs_().neg_()
            head.fc2.bias.fill_(-10.0)
        active = (head(x) > 0).float().mean().item()
        if name == "FastRCNNConvFCHead":
            assert active == 0.0
        else:
            assert 0.2 < active < 0.8
