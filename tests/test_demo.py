"""demo.py and benchmarks/side_by_side.py on a tiny random-weight RS-Mask R-CNN (CPU)."""
import os
import sys

import cv2
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import demo  # noqa: E402
import side_by_side  # noqa: E402
from detectron2.checkpoint import DetectionCheckpointer  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402
from rs_detectron2.data import SYNTHETIC_CLASSES  # noqa: E402

RS_CONFIG = os.path.join(ROOT, "configs", "Synthetic", "rs_mask_rcnn_R_18_FPN.yaml")
# The synthetic configs train from scratch (WEIGHTS ""): random weights, nothing to load.
TINY = ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "",
        "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "96"]


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Two images in one folder (PNG, JPEG) and two more PNGs in another, different sizes."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    paths = {}
    for name, (h, w) in {"a/one.png": (70, 90), "a/two.jpg": (96, 64),
                         "b/three.png": (50, 80), "b/four.png": (80, 60)}.items():
        path = root / name
        path.parent.mkdir(exist_ok=True)
        assert cv2.imwrite(str(path), rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        paths[name] = str(path)
    return root, paths


def tiny_opts(tmp_path):
    return TINY + ["DATASETS.RS_SYNTHETIC.ROOT", str(tmp_path / "data")]


def test_two_images_and_a_glob_to_a_folder(images, tmp_path):
    root, paths = images
    out = tmp_path / "out" / "nested"  # created by the demo
    written = demo.main([
        "--config-file", RS_CONFIG,
        "--input", paths["a/one.png"], paths["a/two.jpg"], str(root / "b" / "*.png"),
        "--output", str(out), "--confidence-threshold", "0.0", *tiny_opts(tmp_path),
    ])
    expected = ["a/one.png", "a/two.jpg", "b/four.png", "b/three.png"]  # globs sorted
    assert written == [str(out / os.path.basename(name)) for name in expected]
    for name, path in zip(expected, written):
        drawn, source = cv2.imread(path), cv2.imread(paths[name])
        assert drawn is not None and drawn.shape == source.shape


def test_one_input_to_a_file_with_a_checkpoint(images, tmp_path):
    _, paths = images
    cfg = demo.setup_cfg(RS_CONFIG, tiny_opts(tmp_path), 0.5)
    DetectionCheckpointer(build_model(cfg), save_dir=str(tmp_path)).save("random_model")
    out = tmp_path / "drawn.png"
    # No option after --input: the trailing KEY VALUE pairs still become config overrides.
    written = demo.main(["--config-file", RS_CONFIG, "--output", str(out),
                         "--input", paths["b/three.png"], *tiny_opts(tmp_path),
                         "MODEL.WEIGHTS", str(tmp_path / "random_model.pth")])
    assert written == [str(out)]
    assert cv2.imread(str(out)).shape == (50, 80, 3)


def test_clear_errors_before_building_a_model(images, tmp_path):
    root, paths = images
    with pytest.raises(FileNotFoundError, match=r"No input image matches '.*\*\.gif'"):
        demo.main(["--config-file", RS_CONFIG, "--input", str(root / "*.gif"),
                   "--output", str(tmp_path), *tiny_opts(tmp_path)])
    with pytest.raises(FileNotFoundError, match="missing.png"):
        demo.main(["--config-file", RS_CONFIG, "--input", paths["a/one.png"],
                   str(root / "missing.png"), "--output", str(tmp_path), *tiny_opts(tmp_path)])
    with pytest.raises(FileNotFoundError, match="MODEL.WEIGHTS file not found"):
        demo.main(["--config-file", RS_CONFIG, "--input", paths["a/one.png"],
                   "--output", str(tmp_path), *tiny_opts(tmp_path),
                   "MODEL.WEIGHTS", str(tmp_path / "no_such_model.pth")])
    with pytest.raises(ValueError, match="2 inputs"):
        demo.main(["--config-file", RS_CONFIG, "--input", str(root / "a" / "*"),
                   "--output", str(tmp_path / "one.png"), *tiny_opts(tmp_path)])
    with pytest.raises(FileNotFoundError, match="Config file not found"):
        demo.main(["--config-file", str(tmp_path / "nope.yaml"), "--input", paths["a/one.png"]])


def test_config_thresholds_metadata_and_opts_forms(tmp_path):
    args = demo.parse_args(["--config-file", RS_CONFIG, "--input", "x.png",
                            "--confidence-threshold", "0.3", "--opts", "MODEL.DEVICE", "cpu"])
    assert args.opts == ["MODEL.DEVICE", "cpu"] and args.input == ["x.png"]
    cfg = demo.setup_cfg(RS_CONFIG, args.opts + tiny_opts(tmp_path), args.confidence_threshold)
    assert cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST == 0.3
    assert cfg.MODEL.RETINANET.SCORE_THRESH_TEST == 0.3
    assert cfg.MODEL.PANOPTIC_FPN.COMBINE.INSTANCES_CONFIDENCE_THRESH == 0.3
    assert demo.get_metadata(cfg).thing_classes == list(SYNTHETIC_CLASSES)
    assert not os.path.exists(tmp_path / "data")  # class names without generating the data


def test_side_by_side_writes_one_png(images, tmp_path):
    _, paths = images
    stock = os.path.join(ROOT, "configs", "Synthetic", "mask_rcnn_R_18_FPN.yaml")
    if not os.path.isfile(stock):  # pragma: no cover
        stock = RS_CONFIG
    out = tmp_path / "fig" / "side_by_side.png"
    written = side_by_side.main([
        "--left", RS_CONFIG, "", "--right", stock, "",
        "--input", paths["a/one.png"], paths["b/four.png"], "--output", str(out),
        "--titles", "RS-Mask R-CNN", "Mask R-CNN", "--confidence-threshold", "0.2",
        *tiny_opts(tmp_path),
    ])
    assert written == str(out)
    figure = cv2.imread(str(out))
    # Two rows of two panels, each panel at least MIN_PANEL_PX wide.
    assert figure is not None and figure.shape[1] >= 2 * side_by_side.MIN_PANEL_PX
