"""The LazyConfigs (Python configs) against their YAML twins, and lazy_train_net.py.

Each lazy config must build the model its YAML twin builds: the same modules, parameters,
frozen parameters and settings of every module, and, given the same weights, the same
detections and (training) losses; the same optimizer groups, learning-rate curve and data
pipeline. The synthetic demo's lazy config trains and evaluates through the documented
command.
"""
import os
import re
import shlex
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

from detectron2.config import LazyConfig, get_cfg, instantiate
from detectron2.data import DatasetMapper
from detectron2.solver import build_lr_scheduler, build_optimizer
from detectron2.structures import Boxes, Instances

from rs_detectron2.config import add_rs_config
from rs_detectron2.engine import RSTrainer, lazy_model_num_classes
from rs_detectron2.engine.lazy_training import lazy_dataset_names, ranking_check_settings

from .tiny_launch import write_tiny_coco

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(ROOT, "configs")

# (lazy config, YAML twin, meta-architecture kind)
TWINS = [
    ("Synthetic/pretrained/rs_mask_rcnn_R_18_FPN.py",
     "Synthetic/pretrained/rs_mask_rcnn_R_18_FPN.yaml"),
    ("COCO-InstanceSegmentation/rs_mask_rcnn_R_50_FPN_1x.py",
     "COCO-InstanceSegmentation/rs_mask_rcnn_R_50_FPN_1x.yaml"),
    ("COCO-Detection/rs_atss_R_50_FPN_1x.py", "COCO-Detection/rs_atss_R_50_FPN_1x.yaml"),
]
IDS = [lazy.split("/")[-1] for lazy, _ in TWINS]


def load_lazy(path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # detectron2's loader imports pkg_resources
        return LazyConfig.load(os.path.join(CONFIGS, path))


def load_yaml(path):
    cfg = get_cfg()
    add_rs_config(cfg)
    cfg.merge_from_file(os.path.join(CONFIGS, path))
    cfg.MODEL.DEVICE = "cpu"
    return cfg


_PLAIN = (bool, int, float, str, type(None))


def _plain(value):
    """Settings as comparable plain values (tuples and lists alike; floats to 4 digits:
    the YAML anchor sizes are written with 4 decimals)."""
    if isinstance(value, float):
        return round(value, 4)
    if isinstance(value, _PLAIN):
        return value
    if isinstance(value, (ListConfig, DictConfig)):
        value = OmegaConf.to_container(value)
    if isinstance(value, (list, tuple)):
        items = [_plain(v) for v in value]
        return items if all(v is not _SKIP for v in items) else _SKIP
    if isinstance(value, dict):
        items = {k: _plain(v) for k, v in value.items()}
        return items if all(v is not _SKIP for v in items.values()) else _SKIP
    if isinstance(value, torch.Tensor) and value.numel() <= 64:
        return [round(float(v), 4) for v in value.flatten()]
    return _SKIP


_SKIP = object()


# Settings that the RS module does not read (RSRetinaNet regresses with GIoU, not smooth
# L1), where detectron2's YAML default and its LazyConfig default differ.
UNREAD = {"RSRetinaNet": {"smooth_l1_beta"}}


def module_settings(model):
    """name -> (type, plain non-module attributes) of every module of ``model``; a loss
    weight left out reads as 1 (``loss_weight.get(name, 1.0)``) and is filled in."""
    out = {}
    for name, module in model.named_modules():
        attrs = {k: _plain(v) for k, v in vars(module).items()
                 if not k.startswith("_") and k != "training"
                 and k not in UNREAD.get(type(module).__name__, ())}
        if isinstance(attrs.get("loss_weight"), dict) and "loss_box_reg" in attrs["loss_weight"]:
            attrs["loss_weight"] = {"loss_cls": 1.0, **attrs["loss_weight"]}
        out[name] = (type(module).__name__, {k: v for k, v in attrs.items() if v is not _SKIP})
    return out


def box2box_weights(model):
    return {name: tuple(m.box2box_transform.weights) for name, m in model.named_modules()
            if hasattr(m, "box2box_transform")}


@pytest.fixture(scope="module", params=TWINS, ids=IDS)
def twins(request):
    lazy_path, yaml_path = request.param
    lazy_cfg, yaml_cfg = load_lazy(lazy_path), load_yaml(yaml_path)
    torch.manual_seed(0)
    lazy_model = instantiate(lazy_cfg.model)
    yaml_model = RSTrainer.build_model(yaml_cfg)
    return lazy_cfg, yaml_cfg, lazy_model, yaml_model


def test_same_modules_parameters_and_settings(twins):
    _, _, lazy_model, yaml_model = twins
    a, b = lazy_model.state_dict(), yaml_model.state_dict()
    assert sorted(a) == sorted(b)
    assert {k: tuple(v.shape) for k, v in a.items()} == {k: tuple(v.shape) for k, v in b.items()}
    frozen = {n for n, p in lazy_model.named_parameters() if not p.requires_grad}
    assert frozen == {n for n, p in yaml_model.named_parameters() if not p.requires_grad}
    assert module_settings(lazy_model) == module_settings(yaml_model)
    assert box2box_weights(lazy_model) == box2box_weights(yaml_model)


def _images(model, seed, n=2, size=(160, 192)):
    g = torch.Generator().manual_seed(seed)
    return [{"image": torch.randint(0, 256, (3, *size), generator=g).float(),
             "height": size[0], "width": size[1]} for _ in range(n)]


def test_same_detections_with_the_same_weights(twins):
    _, _, lazy_model, yaml_model = twins
    lazy_model.load_state_dict(yaml_model.state_dict())
    lazy_model.eval(), yaml_model.eval()
    # Untrained RS-ATSS scores sit at its 0.01 prior: no threshold, so that both detect.
    for model in (lazy_model, yaml_model):
        for module in model.modules():
            if hasattr(module, "test_score_thresh"):
                module.test_score_thresh = 0.0
    inputs = _images(yaml_model, seed=1)
    with torch.no_grad():
        a, b = lazy_model(inputs), yaml_model(inputs)
    for x, y in zip(a, b):
        x, y = x["instances"], y["instances"]
        assert len(x) == len(y) and len(x) > 0
        # The lazy anchors are exact powers of 2 ** (1/3); the YAML ones 4-decimal copies.
        torch.testing.assert_close(x.pred_boxes.tensor, y.pred_boxes.tensor, atol=1e-2, rtol=0)
        torch.testing.assert_close(x.scores, y.scores, atol=1e-4, rtol=0)
        assert torch.equal(x.pred_classes, y.pred_classes)
        if y.has("pred_masks"):
            assert (x.pred_masks != y.pred_masks).float().mean() < 1e-3


def test_same_training_losses_with_the_same_weights(twins):
    lazy_cfg, _, lazy_model, yaml_model = twins
    lazy_model.load_state_dict(yaml_model.state_dict())
    lazy_model.train(), yaml_model.train()
    inputs = _images(yaml_model, seed=2)
    num_classes = lazy_model_num_classes(lazy_cfg)[1]
    for i, x in enumerate(inputs):
        inst = Instances(x["image"].shape[1:])
        inst.gt_boxes = Boxes(torch.tensor([[10.0, 20.0, 90.0, 100.0], [60.0, 40.0, 150.0, 120.0]]))
        inst.gt_classes = torch.tensor([i % num_classes, (i + 1) % num_classes])
        if lazy_cfg.dataloader.train.mapper.get("use_instance_mask", False):
            from detectron2.structures import BitMasks

            masks = torch.zeros(2, *x["image"].shape[1:], dtype=torch.bool)
            masks[0, 20:100, 10:90] = True
            masks[1, 40:120, 60:150] = True
            inst.gt_masks = BitMasks(masks)
        x["instances"] = inst
    from detectron2.utils.events import EventStorage

    losses = []
    for model in (lazy_model, yaml_model):
        torch.manual_seed(3)  # the random subset of mask RoIs
        with EventStorage():
            losses.append({k: float(v) for k, v in model(inputs).items()})
    assert sorted(losses[0]) == sorted(losses[1]) and len(losses[0]) >= 3
    for k in losses[1]:
        assert losses[0][k] == pytest.approx(losses[1][k], rel=1e-3, abs=1e-5), k


def test_same_optimizer_and_learning_rate_curve(twins):
    lazy_cfg, yaml_cfg, lazy_model, _ = twins
    lazy_cfg.optimizer.params.model = lazy_model
    lazy_opt = instantiate(lazy_cfg.optimizer)
    yaml_opt = build_optimizer(yaml_cfg, lazy_model)
    assert type(lazy_opt).__name__ == type(yaml_opt).__name__  # SGD or SGDWithGradientClip
    settings = lambda opt: [  # noqa: E731
        ({k: v for k, v in g.items() if k != "params"}, [id(p) for p in g["params"]])
        for g in opt.param_groups]
    assert settings(lazy_opt) == settings(yaml_opt)
    assert lazy_cfg.train.max_iter == yaml_cfg.SOLVER.MAX_ITER
    from detectron2.solver import LRMultiplier

    lazy_sched = LRMultiplier(lazy_opt, instantiate(lazy_cfg.lr_multiplier), lazy_cfg.train.max_iter)
    yaml_sched = build_lr_scheduler(yaml_cfg, yaml_opt)
    max_iter = yaml_cfg.SOLVER.MAX_ITER
    checks = sorted({0, 1, 10, 99, 100, 499, 500, max_iter // 2, max_iter - 1}
                    | {s - 1 for s in yaml_cfg.SOLVER.STEPS} | set(yaml_cfg.SOLVER.STEPS))
    lr = {"lazy": [], "yaml": []}
    for it in range(max_iter):
        if it in checks:
            lr["lazy"].append(lazy_opt.param_groups[0]["lr"])
            lr["yaml"].append(yaml_opt.param_groups[0]["lr"])
        lazy_sched.step(), yaml_sched.step()
        if it > max(checks):
            break
    assert lr["lazy"] == pytest.approx(lr["yaml"], rel=1e-9)


def augmentation_settings(mapper):
    """(type, settings) of each augmentation; a ResizeShortestEdge to one size reads the same
    whether sampled by "range" (detectron2's LazyConfig default) or "choice" (YAML)."""
    out = []
    for aug in mapper.augmentations.augs:
        attrs = {k: _plain(v) for k, v in vars(aug).items()}
        if type(aug).__name__ == "ResizeShortestEdge" and len(set(attrs["short_edge_length"])) == 1:
            attrs.update(short_edge_length=attrs["short_edge_length"][0], is_range=None,
                         sample_style=None)
        out.append((type(aug).__name__, attrs))
    return out


def test_same_data_pipeline_and_evaluation(twins):
    lazy_cfg, yaml_cfg, _, _ = twins
    for is_train in (True, False):
        node = lazy_cfg.dataloader.train if is_train else lazy_cfg.dataloader.test
        lazy_mapper = instantiate(node.mapper)
        yaml_mapper = DatasetMapper(yaml_cfg, is_train)
        assert augmentation_settings(lazy_mapper) == augmentation_settings(yaml_mapper)
        # At test time the mapper drops the annotations: only these two matter there.
        keys = ("is_train", "image_format") + (("use_instance_mask", "instance_mask_format",
                "use_keypoint", "recompute_boxes", "proposal_topk") if is_train else ())
        for key in keys:
            assert getattr(lazy_mapper, key) == getattr(yaml_mapper, key), (is_train, key)
    assert lazy_dataset_names(lazy_cfg.dataloader.train) == list(yaml_cfg.DATASETS.TRAIN)
    assert lazy_dataset_names(lazy_cfg.dataloader.test) == list(yaml_cfg.DATASETS.TEST)
    assert lazy_cfg.dataloader.train.total_batch_size == yaml_cfg.SOLVER.IMS_PER_BATCH
    assert lazy_cfg.dataloader.train.num_workers == yaml_cfg.DATALOADER.NUM_WORKERS
    evaluator = lazy_cfg.dataloader.evaluator
    assert tuple(evaluator.tasks) == (("bbox", "segm") if yaml_cfg.MODEL.MASK_ON else ("bbox",))
    assert evaluator.olrp == yaml_cfg.TEST.OLRP.ENABLED
    assert lazy_cfg.train.init_checkpoint == yaml_cfg.MODEL.WEIGHTS
    assert lazy_cfg.train.get("seed", -1) == yaml_cfg.SEED
    check = ranking_check_settings(lazy_cfg)
    assert (check["period"], check["threshold"]) == (yaml_cfg.MODEL.RS.RANKING_CHECK.PERIOD,
                                                      yaml_cfg.MODEL.RS.RANKING_CHECK.THRESHOLD)


def test_ranking_check_settings_reject_unknown_keys():
    cfg = load_lazy(TWINS[0][0])
    cfg.train.ranking_check = {"period": 100, "treshold": 0.9}
    with pytest.raises(KeyError, match="treshold"):
        ranking_check_settings(cfg)
    del cfg.train["ranking_check"]
    assert ranking_check_settings(cfg) == {"period": 500, "threshold": 0.95}


def _lazy_train_net(*argv, cwd):
    env = dict(os.environ, OMP_NUM_THREADS="1", DETECTRON2_DATASETS=os.path.join(cwd, "d2data"))
    return subprocess.run([sys.executable, os.path.join(ROOT, "lazy_train_net.py"), *argv],
                          cwd=cwd, capture_output=True, text=True, env=env, timeout=600)


def readme_command(name):
    """The README's ``<!-- snippet: name -->`` shell command, as lazy_train_net.py arguments
    (config paths made absolute)."""
    with open(os.path.join(ROOT, "README.md")) as f:
        match = re.search(rf"<!-- snippet: {name} -->\n```bash\n(.*?)```", f.read(), re.S)
    assert match, f"README has no snippet {name}"
    argv = shlex.split(match.group(1).replace("\\\n", " "))
    assert argv[:2] == ["python", "lazy_train_net.py"], argv
    return [os.path.join(ROOT, a) if a.startswith("configs/") else a for a in argv[2:]]


def _copypaste_ap(text):
    return [line.split("copypaste: ")[1] for line in text.splitlines()
            if "copypaste: " in line and line.split("copypaste: ")[1][:1].isdigit()]


def test_lazy_demo_config_trains_and_evaluates_with_the_documented_command(tmp_path):
    """The README's two lazy commands on the synthetic demo's config, as written, with
    overrides appended that shrink them to 4 iterations on a tiny dataset of one's own
    (nothing generated, no pretraining); the evaluation reads the checkpoint the training
    wrote where the README says."""
    train_argv, eval_argv = readme_command("lazy-train"), readme_command("lazy-eval")
    paths = write_tiny_coco(str(tmp_path / "mydata"), num_images=6)
    datasets = ["--coco-dataset", "lazy_train", paths["train_json"], paths["image_root"],
                "--coco-dataset", "lazy_val", paths["val_json"], paths["image_root"]]
    # flags before the first key=value override (argparse takes all after it as overrides)
    with_datasets = lambda argv: next(  # noqa: E731
        argv[:i] + datasets + argv[i:] for i in range(len(argv) + 1)
        if i == len(argv) or "=" in argv[i])
    train_argv, eval_argv = with_datasets(train_argv), with_datasets(eval_argv)
    data = ["dataloader.train.dataset.names=lazy_train", "dataloader.test.dataset.names=lazy_val",
            "model.roi_heads.num_classes=2", "dataloader.train.num_workers=0",
            "dataloader.test.num_workers=0", "dataloader.train.total_batch_size=2"]
    result = _lazy_train_net(*train_argv, *data, "train.max_iter=4", "train.init_checkpoint=",
                             "train.checkpointer.period=2", "train.ranking_check.period=2",
                             cwd=str(tmp_path))
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-4000:]
    out = tmp_path / "output" / "rs_mask_rcnn_R_18_FPN_synthetic_pretrained_lazy"
    assert "running on cpu instead" in log
    assert "loss_roi_rank" in log and "loss_rpn_sort" in log and "loss_mask" in log
    assert "loss_roi_rank is still" in log  # 4 iterations: the stall check speaks
    assert (out / "model_final.pth").is_file() and (out / "config.yaml").is_file()
    for task in ("bbox", "segm"):
        assert f"Evaluation results for {task}" in log
        assert f"copypaste: Task: {task}_oLRP" in log
        assert (out / "inference" / f"olrp_thresholds_{task}.json").is_file()
    assert not os.path.exists(tmp_path / "d2data")  # no built-in dataset was generated

    evaluated = _lazy_train_net(*eval_argv, *data, f"train.output_dir={tmp_path / 'eval'}",
                                cwd=str(tmp_path))
    elog = evaluated.stdout + evaluated.stderr
    assert evaluated.returncode == 0, elog[-4000:]
    assert "copypaste: AP,AP50,AP75,APs,APm,APl" in elog
    # the checkpoint gives the box and mask AP printed after training
    assert _copypaste_ap(elog)[:2] == _copypaste_ap(log)[:2] and len(_copypaste_ap(log)) >= 2


def test_lazy_train_net_refuses_fewer_classes_than_the_data(tmp_path):
    config = os.path.join(CONFIGS, TWINS[0][0])
    result = _lazy_train_net("--config-file", config, "model.roi_heads.num_classes=3",
                             f"train.output_dir={tmp_path / 'out'}", cwd=str(tmp_path))
    assert result.returncode != 0
    assert "has 6 classes" in result.stderr
    assert "model.roi_heads.num_classes = 3: set model.roi_heads.num_classes=6" in result.stderr
    assert not os.path.exists(tmp_path / "d2data")
