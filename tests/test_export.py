"""Export of the RS models as detectron2 exports its own (docs/deployment.md): tracing
(TracingAdapter + torch.jit.trace), scripting (scripting_with_instances) and ONNX, each
saved, loaded and compared with the eager model.

The models are tiny versions of the shipped synthetic configs, built by RSTrainer (so the
R-CNNs' poolers use the sparse CPU ROIAlign, which steps aside for torchvision's kernel
while exporting), with random weights, in eval mode, on random 64-128 px images.
"""
import importlib.util
import os

import pytest
import torch
from PIL import Image

from detectron2.config import get_cfg
from detectron2.export import TracingAdapter, scripting_with_instances
from detectron2.layers import ROIAlign
from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.structures import Boxes, Instances
from detectron2.utils.testing import convert_scripted_instances

from rs_detectron2 import add_rs_config
from rs_detectron2.engine import RSTrainer
from rs_detectron2.layers import SparseROIAlign

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SYNTHETIC = os.path.join(ROOT, "configs", "Synthetic")
ATOL = 1e-4

# name -> (shipped synthetic config, overrides). No synthetic RS-Cascade config ships: it is
# RS-Faster R-CNN with the cascade heads of COCO-Detection/rs_cascade_rcnn_R_50_FPN_1x.yaml.
MODELS = {
    "rs_faster": ("rs_faster_rcnn_R_18_FPN.yaml", []),
    "rs_mask": ("rs_mask_rcnn_R_18_FPN.yaml", []),
    "rs_cascade": ("rs_faster_rcnn_R_18_FPN.yaml",
                   ["MODEL.ROI_HEADS.NAME", "RSCascadeROIHeads",
                    "MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG", True]),
    "rs_atss": ("rs_atss_R_18_FPN.yaml", []),
    "rs_retinanet": ("Base-RS-Synthetic-R18-RetinaNet.yaml", []),
    "rs_paa": ("rs_paa_R_18_FPN.yaml", []),  # with score voting
    "rs_yolact": ("rs_yolact_R_18_FPN.yaml", []),  # with masks from the prototypes
    "rs_solov2": ("rs_solov2_R_18_FPN.yaml", ["MODEL.SOLOV2.SCORE_THRESH_TEST", 0.0,
                                              "MODEL.SOLOV2.UPDATE_THRESH_TEST", 0.0]),
}
TWO_STAGE = ("rs_faster", "rs_mask", "rs_cascade")
MATRIX_NMS = ("rs_yolact", "rs_solov2")
# exported by tracing and ONNX only: TorchScript cannot compile SOLOv2's loops over its
# levels' grids (docs/deployment.md)
NOT_SCRIPTABLE = ("rs_solov2",)


def _load_export_script():
    """scripts/export_model.py as a module (the scripts folder is not a package)."""
    spec = importlib.util.spec_from_file_location(
        "export_model", os.path.join(ROOT, "scripts", "export_model.py"))
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


EXPORT_SCRIPT = _load_export_script()
# The Instances fields scripting declares and the ONNX opset: the script's own.
FIELDS = EXPORT_SCRIPT.SCRIPTING_FIELDS
ONNX_OPSET = EXPORT_SCRIPT.ONNX_OPSET


# The shipped synthetic configs, shrunk to run in seconds on a CPU.
TINY_OPTS = [
    "MODEL.DEVICE", "cpu",
    "MODEL.RESNETS.STEM_OUT_CHANNELS", 8,
    "MODEL.RESNETS.RES2_OUT_CHANNELS", 8,
    "MODEL.FPN.OUT_CHANNELS", 32,  # GroupNorm(32) of the RS-ATSS head
    "MODEL.ROI_BOX_HEAD.FC_DIM", 32,
    "MODEL.ROI_MASK_HEAD.CONV_DIM", 8,
    "MODEL.RPN.PRE_NMS_TOPK_TEST", 100,
    "MODEL.RPN.POST_NMS_TOPK_TEST", 20,
    "MODEL.RETINANET.SCORE_THRESH_TEST", 0.0,  # random weights score about the prior, 0.01
    "TEST.DETECTIONS_PER_IMAGE", 1000,  # all the candidates that pass NMS
]


def tiny_cfg(name, opts=()):
    """The shipped synthetic config of ``name`` with TINY_OPTS, then ``opts``."""
    config_file, overrides = MODELS[name]
    cfg = get_cfg()
    add_rs_config(cfg)
    cfg.merge_from_file(os.path.join(SYNTHETIC, config_file))
    cfg.merge_from_list(overrides + TINY_OPTS + list(opts))
    return cfg


def build_tiny(name, opts=()):
    torch.manual_seed(0)
    model = RSTrainer.build_model(tiny_cfg(name, opts))
    return model.eval()


def images(sizes, seed):
    gen = torch.Generator().manual_seed(seed)
    return tuple(torch.randint(0, 256, (3, h, w), generator=gen).float() for h, w in sizes)


TRACE_IMAGES = ((64, 96), (80, 72))  # the sizes the model is traced with
TEST_IMAGES = ((96, 128), (112, 80))  # the sizes it is compared on


def inference(model, *images):
    """One Instances per image: the R-CNNs' detections before resizing (RoI masks 28 x 28),
    as detectron2's export tests compare them; the one-stage models' as they return them."""
    inputs = [{"image": image} for image in images]
    if hasattr(model, "roi_heads"):
        return model.inference(inputs, do_postprocess=False)
    return [out["instances"] for out in model(inputs)]


# The script's canonical order: by score, class, box. Exactly tied scores are common in
# random-weight models (e.g. a 1 x 1 P7 under GroupNorm gives bias-only logits), and
# detectron2's batched NMS breaks ties differently in eager mode (a loop over classes for
# many boxes) and in a trace (one NMS over offset boxes).
canonical_order = EXPORT_SCRIPT.canonical_order


def max_abs_diff(expected, actual):
    """Max |difference| over the float fields of two lists of Instances (each in
    :func:`canonical_order`); asserts equal lengths, fields and integer fields (classes)."""
    assert len(expected) == len(actual)
    worst = 0.0
    for want, got in zip(expected, actual):
        if not isinstance(got, Instances):
            got = convert_scripted_instances(got)
        assert len(want) > 0, "nothing detected: the comparison would be empty"
        want, got = canonical_order(want), canonical_order(got)
        assert sorted(want.get_fields()) == sorted(got.get_fields())
        for field, value in want.get_fields().items():
            other = got.get(field)
            if isinstance(value, Boxes):
                value, other = value.tensor, other.tensor
            assert value.shape == other.shape, field
            if value.dtype.is_floating_point:
                worst = max(worst, (value - other).abs().max().item())
            else:
                assert torch.equal(value, other), field
    return worst


def uses_sparse_pooling(model):
    heads = getattr(model, "roi_heads", None)
    poolers = [getattr(heads, name, None) for name in ("box_pooler", "mask_pooler")]
    levels = [level for p in poolers if p is not None for level in p.level_poolers]
    return bool(levels) and all(isinstance(level, SparseROIAlign) for level in levels)


@pytest.mark.parametrize("name", TWO_STAGE)
def test_export_models_use_sparse_pooling_as_shipped(name):
    """The eager reference of the two-stage tests is the sparse CPU ROIAlign."""
    assert uses_sparse_pooling(build_tiny(name))


def test_export_sparse_roi_align_steps_aside_only_while_exporting():
    """Eager: the sparse product; traced, scripted: torchvision's kernel; equal results."""
    layer = SparseROIAlign((7, 7), 0.25, 0, aligned=True)
    x = torch.rand(2, 4, 20, 24)
    rois = torch.tensor([[0, 3.0, 5, 60, 40], [1, 10, 0, 90, 70], [0, 0, 0, 95, 79]])
    assert SparseROIAlign.uses_sparse(x)
    traced = torch.jit.trace(layer, (x, rois))
    graph = str(traced.inlined_graph)
    assert "torchvision::roi_align" in graph and "PythonOp" not in graph
    scripted = torch.jit.script(layer)
    assert "torchvision::roi_align" in str(scripted.inlined_graph)
    reference = ROIAlign((7, 7), 0.25, 0, aligned=True)(x, rois)
    for out in (layer(x, rois), traced(x, rois), scripted(x, rois)):
        torch.testing.assert_close(out, reference, rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", list(MODELS))
def test_export_tracing(name, tmp_path):
    """TracingAdapter + torch.jit.trace at two image sizes, save, load, run at two others."""
    model = build_tiny(name)
    adapter = TracingAdapter(model, images(TRACE_IMAGES, 1), inference).eval()
    with torch.no_grad():
        traced = torch.jit.trace(adapter, images(TRACE_IMAGES, 1))
    assert "PythonOp" not in str(traced.inlined_graph)
    traced.save(str(tmp_path / "model.ts"))
    loaded = torch.jit.load(str(tmp_path / "model.ts"))
    test_images = images(TEST_IMAGES, 2)
    with torch.no_grad():
        expected = inference(model, *test_images)
        actual = adapter.outputs_schema(loaded(*test_images))
    diff = max_abs_diff(expected, actual)
    print(f"tracing {name}: max abs diff {diff:.3g}")
    assert diff < ATOL
    if name in TWO_STAGE:
        assert uses_sparse_pooling(model)  # the eager model kept its sparse pooling


@pytest.mark.parametrize("name", list(MODELS))
def test_export_scripting(name, tmp_path):
    """scripting_with_instances, save, load, outputs equal to eager's."""
    if name in NOT_SCRIPTABLE:
        with pytest.raises(RuntimeError):  # fails loudly, at compile time
            scripting_with_instances(build_tiny(name), FIELDS)
        return
    model = build_tiny(name)
    scripted = scripting_with_instances(model, FIELDS)
    scripted.save(str(tmp_path / "model.ts"))
    loaded = torch.jit.load(str(tmp_path / "model.ts"))
    test_images = images(TEST_IMAGES, 2)
    inputs = [{"image": image} for image in test_images]
    with torch.no_grad():
        expected = inference(model, *test_images)
        if name in TWO_STAGE:
            actual = loaded.inference(inputs, do_postprocess=False)
        else:  # scripted one-stage models return the detections before resizing
            actual = [detector_postprocess(convert_scripted_instances(x), *image.shape[1:])
                      for x, image in zip(loaded(inputs), test_images)]
    diff = max_abs_diff(expected, actual)
    print(f"scripting {name}: max abs diff {diff:.3g}")
    assert diff < ATOL
    if name in TWO_STAGE:
        assert uses_sparse_pooling(model)


@pytest.mark.parametrize("roi_heads", ["RSStandardROIHeads", "RSCascadeROIHeads"])
def test_export_coco_base_config_with_masks(roi_heads, tmp_path):
    """The RS heads on configs/Base-RS-RCNN-FPN.yaml (detectron2's ResNet, FC box head,
    adaptive ROIAlign sampling), masks on, shrunk as in test_rs_heads: traced and scripted,
    saved, loaded, equal to eager."""
    from .test_rs_heads import tiny_cfg as heads_tiny_cfg

    torch.manual_seed(0)
    model = RSTrainer.build_model(heads_tiny_cfg(roi_heads, mask_on=True)).eval()
    assert uses_sparse_pooling(model)
    adapter = TracingAdapter(model, images(TRACE_IMAGES, 1), inference).eval()
    with torch.no_grad():
        torch.jit.trace(adapter, images(TRACE_IMAGES, 1)).save(str(tmp_path / "traced.ts"))
    scripting_with_instances(model, FIELDS).save(str(tmp_path / "scripted.ts"))
    traced = torch.jit.load(str(tmp_path / "traced.ts"))
    scripted = torch.jit.load(str(tmp_path / "scripted.ts"))
    test_images = images(TEST_IMAGES, 2)
    with torch.no_grad():
        expected = inference(model, *test_images)
        assert all(x.has("pred_masks") for x in expected)
        from_trace = adapter.outputs_schema(traced(*test_images))
        from_script = scripted.inference([{"image": x} for x in test_images],
                                         do_postprocess=False)
    for method, actual in (("tracing", from_trace), ("scripting", from_script)):
        diff = max_abs_diff(expected, actual)
        print(f"{method} {roi_heads} (COCO base, masks): max abs diff {diff:.3g}")
        assert diff < ATOL


def export_onnx(name, path):
    """The tiny model's TracingAdapter exported to ONNX at ``path`` (sizes of TRACE_IMAGES);
    returns (eager model, adapter). With the 10 best detections: onnxruntime's float
    arithmetic differs from torch's by ~1e-7, which reorders the near-tied scores of the
    random-weight one-stage models' hundreds of low-scoring ones (so that detections of
    different boxes trade places)."""
    model = build_tiny(name, ["TEST.DETECTIONS_PER_IMAGE", 10])
    # eval(): torch.onnx.export puts the adapter (and the model) back in the adapter's mode.
    adapter = TracingAdapter(model, images(TRACE_IMAGES, 1), inference).eval()
    torch.onnx.export(adapter, images(TRACE_IMAGES, 1), str(path), opset_version=ONNX_OPSET,
                      dynamo=False)
    assert not model.training
    return model, adapter



@pytest.mark.parametrize("name", list(MODELS))
def test_export_onnx_writes_the_graph(name, tmp_path, monkeypatch):
    """torch.onnx.export of the TracingAdapter writes a graph of standard ONNX ops
    (RoiAlign for the R-CNNs and YOLACT's masks, NonMaxSuppression but for YOLACT's Fast NMS
    and SOLOv2's Matrix NMS). Without the onnx package, torch's
    exporter builds the whole protobuf and only fails at its last step, which inserts
    onnxscript functions (there are none here): that step is skipped then."""
    try:
        import onnx
    except ImportError:
        onnx = None
        from torch.onnx._internal.torchscript_exporter import onnx_proto_utils

        if not hasattr(onnx_proto_utils, "_add_onnxscript_fn"):
            pytest.skip("onnx is not installed and this torch's exporter needs it")
        monkeypatch.setattr(onnx_proto_utils, "_add_onnxscript_fn", lambda proto, opsets: proto)
    path = tmp_path / "model.onnx"
    export_onnx(name, path)
    data = path.read_bytes()
    assert len(data) > 10000
    # YOLACT's Fast NMS and SOLOv2's Matrix NMS are matrix ops (no NonMaxSuppression);
    # YOLACT samples its masks with RoiAlign (box_mask_samples)
    assert (b"NonMaxSuppression" in data) == (name not in MATRIX_NMS)
    assert (b"RoiAlign" in data) == (name in TWO_STAGE or name == "rs_yolact")
    assert b"PythonOp" not in data
    if onnx is not None:
        onnx.checker.check_model(onnx.load(str(path)))


@pytest.mark.parametrize("name", list(MODELS))
def test_export_onnxruntime(name, tmp_path):
    """The ONNX model run by onnxruntime gives the eager model's outputs (at the traced
    image sizes: the export has no dynamic axes)."""
    pytest.importorskip("onnx", reason="the ONNX comparison needs the onnx package")
    ort = pytest.importorskip("onnxruntime", reason="the ONNX comparison needs onnxruntime")
    model, adapter = export_onnx(name, tmp_path / "model.onnx")
    session = ort.InferenceSession(str(tmp_path / "model.onnx"),
                                   providers=["CPUExecutionProvider"])
    test_images = images(TRACE_IMAGES, 3)
    feeds = {arg.name: image.numpy() for arg, image in zip(session.get_inputs(), test_images)}
    outputs = [torch.from_numpy(x) for x in session.run(None, feeds)]
    with torch.no_grad():
        expected = inference(model, *test_images)
    diff = max_abs_diff(expected, adapter.outputs_schema(outputs))
    print(f"onnxruntime {name}: max abs diff {diff:.3g}")
    assert diff < ATOL


def run_export_script(argv):
    """scripts/export_model.py's main, in this process."""
    torch.manual_seed(0)  # the random weights of the model it builds
    return EXPORT_SCRIPT.main(argv)


def write_images(folder, sizes):
    paths = []
    for k, image in enumerate(images(sizes, 4)):
        path = str(folder / f"image{k}.png")
        Image.fromarray(image.permute(1, 2, 0).byte().numpy()).save(path)
        paths.append(path)
    return paths


@pytest.mark.parametrize("name, method, fmt", [
    ("rs_mask", "tracing", "torchscript"),
    ("rs_mask", "scripting", "torchscript"),
    ("rs_atss", "scripting", "torchscript"),
    ("rs_mask", "tracing", "onnx"),
])
def test_export_model_script(name, method, fmt, tmp_path):
    """scripts/export_model.py on a tiny random-weight model: writes the file and checks it
    against the eager model on the given images (a mismatch exits with status 1)."""
    config_file, overrides = MODELS[name]
    # One image at a time: P7 must be larger than 1 x 1 for RS-ATSS's GroupNorm.
    paths = write_images(tmp_path, ((136, 160), (160, 140)))
    argv = [
        "--config-file", os.path.join(SYNTHETIC, config_file), "--export-method", method,
        "--format", fmt, "--output", str(tmp_path / "out"),
        *[arg for path in paths for arg in ("--sample-image", path)],
        *[str(x) for x in overrides + TINY_OPTS],
        # the images as they are (the test resolution of the config is 192)
        "INPUT.MIN_SIZE_TEST", "0",
    ]
    if fmt == "onnx" and importlib.util.find_spec("onnx") is None:
        with pytest.raises(SystemExit, match="onnx is not installed"):
            run_export_script(argv)  # says what is missing
        return
    diffs = run_export_script(argv)
    exported = tmp_path / "out" / ("model.ts" if fmt == "torchscript" else "model.onnx")
    assert exported.stat().st_size > 0
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        if fmt == "onnx":
            assert diffs == {}  # exported, not run
            return
    # ONNX has no dynamic axes: only the image of the traced size is checked.
    assert len(diffs) == (1 if fmt == "onnx" else 2)
    assert max(diffs.values()) < ATOL


def test_export_model_script_on_the_test_set(tmp_path):
    """Without --sample-image the script checks on images of DATASETS.TEST[0]."""
    config_file, overrides = MODELS["rs_faster"]
    diffs = run_export_script([
        "--config-file", os.path.join(SYNTHETIC, config_file), "--output",
        str(tmp_path / "out"), "--num-images", "2", *[str(x) for x in overrides + TINY_OPTS],
        "DATASETS.RS_SYNTHETIC.ROOT", str(tmp_path / "data"),
        "DATASETS.RS_SYNTHETIC.NUM_VAL", "2", "DATASETS.RS_SYNTHETIC.IMAGE_SIZE", "96",
        "INPUT.MIN_SIZE_TEST", "96", "INPUT.MAX_SIZE_TEST", "96",
    ])
    assert len(diffs) == 2 and max(diffs.values()) < ATOL
