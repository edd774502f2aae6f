"""DATALOADER.REPEAT_ROUNDING "ceil": the published repeat factor sampling (image i ceil(r_i)
times every epoch), its schedule helpers, the trainer's use of it and the LVIS tool."""
import importlib.util
import itertools
import json
import math
import os
import uuid
from collections import Counter

import cv2
import numpy as np
import pytest
import torch

import detectron2.data.datasets.lvis_v1_category_image_count as d2_lvis_counts
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.samplers import RepeatFactorTrainingSampler
from detectron2.structures import BoxMode
from detectron2.utils import comm

import rs_detectron2.engine.trainer as trainer_module
from rs_detectron2.config import add_rs_config
from rs_detectron2.data.repeat_factor_sampler import (
    CeilRepeatFactorTrainingSampler,
    ceil_repeat_counts,
    lvis_schedule,
    repeated_epoch_size,
    repeated_epoch_size_bounds,
)
from rs_detectron2.engine import RSTrainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def reference_counts(factors):
    """The smallest whole k >= r for each factor r (an integer up to float noise is itself)."""
    counts = []
    for r in factors:
        k = 0
        while k < float(r) - 1e-9:
            k += 1
        counts.append(k)
    return counts


def reference_epoch(factors):
    """Each index i, ceil(r_i) times."""
    return Counter({i: k for i, k in enumerate(reference_counts(factors)) if k})


def random_factors(seed, n=60):
    """float32 factors as detectron2 makes them: fractional ones, exact integers, and ones a
    float32 step above an integer."""
    rng = np.random.default_rng(seed)
    factors = rng.uniform(1.0, 6.0, size=n)
    factors[rng.choice(n, n // 3, replace=False)] = rng.integers(1, 5, size=n // 3)
    factors[:4] = (1.0, 2.0, 1.0000001, 3.0000003)
    return torch.tensor(factors, dtype=torch.float32)


def stream(sampler, start, stop):
    return list(itertools.islice(iter(sampler), start, stop))


# ------------------------------------------------------------------- counts and sizes
def test_ceil_counts_against_loop_reference():
    for seed in range(5):
        factors = random_factors(seed)
        assert ceil_repeat_counts(factors).tolist() == reference_counts(factors.tolist())
    assert ceil_repeat_counts([1.0, 2.0, 1.0000001, 1.5, 4.0]).tolist() == [1, 2, 2, 2, 4]
    # float64 noise above an integer: sqrt(0.07 / (7 / 900)) is 3 exactly, 3 + 4e-16 in
    # float64; a bare ceil would give 4.
    r = math.sqrt(0.07 / (7 / 900))
    assert r > 3 and math.ceil(r) == 4
    assert ceil_repeat_counts([r]).tolist() == [3]


def test_repeated_epoch_size_and_schedule_by_hand():
    assert repeated_epoch_size([1.0, 2.0, 1.5, 1.0000001, 3.2]) == 1 + 2 + 2 + 2 + 4
    assert repeated_epoch_size(torch.ones(7)) == 7
    # 12 epochs of 11 images at batch 16: 132 / 16 = 8.25 -> 9; 88 / 16 = 5.5 -> 6;
    # 121 / 16 = 7.5625 -> 8.
    assert lvis_schedule(11) == (9, (6, 8))
    assert lvis_schedule(16) == (12, (8, 11))
    assert lvis_schedule(10, epochs=24, ims_per_batch=4) == (60, (40, 55))
    # LVIS v1's upper bound: 12 x 127,402 / 16 = 95,551.5; x 8/12 = 63,701; x 11/12 = 87,588.875.
    assert lvis_schedule(127402) == (95552, (63701, 87589))
    with pytest.raises(ValueError):
        lvis_schedule(0)


# ------------------------------------------------------------------- the sampler
def test_one_epoch_holds_each_image_ceil_times():
    for seed in range(3):
        factors = random_factors(seed)
        size = repeated_epoch_size(factors)
        sampler = CeilRepeatFactorTrainingSampler(factors, seed=seed)
        assert size == sum(reference_counts(factors.tolist()))
        assert Counter(stream(sampler, 0, size)) == reference_epoch(factors.tolist())


def test_epochs_differ_in_order_not_content():
    factors = random_factors(0)
    size = repeated_epoch_size(factors)
    epochs = [stream(CeilRepeatFactorTrainingSampler(factors, seed=3), k * size, (k + 1) * size)
              for k in range(3)]
    assert all(Counter(e) == reference_epoch(factors.tolist()) for e in epochs)
    assert epochs[0] != epochs[1] and epochs[1] != epochs[2]
    # Seeded: the same seed gives the same stream.
    assert stream(CeilRepeatFactorTrainingSampler(factors, seed=3), 0, 3 * size) == sum(epochs, [])
    # Without shuffle: the indices in order, each ceil(r_i) times, every epoch.
    plain = CeilRepeatFactorTrainingSampler(factors, shuffle=False, seed=0)
    expected = [i for i, k in enumerate(reference_counts(factors.tolist())) for _ in range(k)]
    assert stream(plain, 0, 2 * size) == expected * 2


def test_integer_factors_give_detectron2s_stream():
    """Where the rules agree the generator logic is detectron2's: the same stream."""
    factors = torch.tensor([1.0, 3.0, 2.0, 1.0, 4.0, 1.0, 2.0], dtype=torch.float32)
    ours = CeilRepeatFactorTrainingSampler(factors, seed=7)
    theirs = RepeatFactorTrainingSampler(factors, seed=7)
    assert stream(ours, 0, 100) == stream(theirs, 0, 100)


def _sampler_as_process(monkeypatch, cls, factors, rank, world_size):
    monkeypatch.setattr(comm, "get_rank", lambda: rank)
    monkeypatch.setattr(comm, "get_world_size", lambda: world_size)
    return cls(factors, seed=11)


def test_sharding_over_two_processes(monkeypatch):
    factors = random_factors(1)
    size = repeated_epoch_size(factors)
    whole = stream(CeilRepeatFactorTrainingSampler(factors, seed=11), 0, 2 * size)
    shards = [stream(_sampler_as_process(monkeypatch, CeilRepeatFactorTrainingSampler, factors,
                                         rank, 2), 0, size) for rank in (0, 1)]
    # Process k gets items k, k + 2, ... of the one stream: together, the stream.
    assert shards[0] == whole[0::2] and shards[1] == whole[1::2]
    # Like detectron2's sampler on the same (integer) factors.
    ints = torch.tensor([1.0, 2.0, 3.0, 1.0, 2.0], dtype=torch.float32)
    for rank in (0, 1):
        ours = _sampler_as_process(monkeypatch, CeilRepeatFactorTrainingSampler, ints, rank, 2)
        theirs = _sampler_as_process(monkeypatch, RepeatFactorTrainingSampler, ints, rank, 2)
        assert stream(ours, 0, 40) == stream(theirs, 0, 40)


# ------------------------------------------------------------------- bounds and the tool
def _dicts(class_sets):
    return [{"annotations": [{"category_id": c} for c in classes]} for classes in class_sets]


def test_bounds_from_category_counts_by_hand_and_reached():
    # N = 100, t = 0.1: r_c = sqrt(10 / n_c). n = 50 -> 1; 10 -> exactly 1; 5 -> 1.41 (k 2);
    # 1 -> 3.16 (k 4). upper = 100 + 5 x 1 + 1 x 3 = 108;
    # lower = 100 + max{5, 1} (m = 1) + 1 (m = 2) + 1 (m = 3) = 107.
    counts = [100, 50, 10, 5, 1]
    assert repeated_epoch_size_bounds(counts, 100, 0.1) == (107, 108)
    # Reached: class 0 in every image; nested sets (class 4's image among class 3's ...) give
    # the lower bound, disjoint repeated classes the upper, by detectron2's own factors.
    for first_of, bound in (({1: 0, 2: 0, 3: 0, 4: 0}, 107), ({1: 0, 2: 50, 3: 60, 4: 65}, 108)):
        sets = [{0} | {c for c, n in enumerate(counts) if c and first_of[c] <= i < first_of[c] + n}
                for i in range(100)]
        assert [sum(c in s for s in sets) for c in range(5)] == counts
        factors = RepeatFactorTrainingSampler.repeat_factors_from_category_frequency(
            _dicts(sets), 0.1)
        assert repeated_epoch_size(factors) == bound
    with pytest.raises(ValueError):
        repeated_epoch_size_bounds([0, 3], 10, 0.1)


def _tool():
    spec = importlib.util.spec_from_file_location(
        "lvis_repeat_schedule", os.path.join(ROOT, "tools", "lvis_repeat_schedule.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tool_bounds_from_a_fake_count_table(monkeypatch, capsys):
    fake = [{"id": i + 1, "image_count": n} for i, n in enumerate([100, 50, 10, 5, 1])]
    monkeypatch.setattr(d2_lvis_counts, "LVIS_CATEGORY_IMAGE_COUNT", fake)
    out = _tool().main(["--num-images", "100", "--threshold", "0.1", "--ims-per-batch", "4"])
    # 12 x 107 / 4 = 321 (steps 214, 294.25 -> 295); 12 x 108 / 4 = 324 (216, 297).
    assert out["epoch_size"] == (107, 108)
    assert out["max_iter"] == (321, 324) and out["steps"] == ((214, 295), (216, 297))
    assert "107..108" in capsys.readouterr().out


def test_tool_lvis_bounds_are_the_configs_schedule():
    out = _tool().main([])
    assert out["num_images"] == 100170 and out["epoch_size"] == (100323, 127402)
    cfg = get_cfg()
    add_rs_config(cfg)
    cfg.merge_from_file(os.path.join(
        ROOT, "configs", "LVISv1-InstanceSegmentation", "rs_mask_rcnn_R_50_FPN_1x.yaml"))
    assert cfg.DATALOADER.REPEAT_ROUNDING == "ceil"
    assert (cfg.SOLVER.MAX_ITER, tuple(cfg.SOLVER.STEPS)) == (out["max_iter"][1], out["steps"][1])


def test_tool_exact_from_a_json(tmp_path, capsys):
    # 5 images, one without annotations (dropped): N = 4, t = 0.5. Class 1 in all 4 images
    # (r 1), class 2 in 1 (f 1/4: sqrt(2) -> k 2), class 3 in 2 (f 1/2: exactly 1 -> k 1).
    # Image 1 holds {1, 2}: 2; the others 1 each: 5 per epoch; 12 x 5 / 2 = 30 (20, 27.5 -> 28).
    anns = [(1, 1), (1, 2), (2, 1), (2, 3), (3, 1), (3, 3), (4, 1)]
    path = tmp_path / "lvis_tiny_train.json"
    path.write_text(json.dumps({
        "images": [{"id": i} for i in range(1, 6)],
        "annotations": [{"id": k, "image_id": i, "category_id": c}
                        for k, (i, c) in enumerate(anns)],
        "categories": [{"id": c} for c in (1, 2, 3)]}))
    out = _tool().main(["--json", str(path), "--threshold", "0.5", "--ims-per-batch", "2"])
    assert out == {"num_images": 4, "epoch_size": 5, "max_iter": 30, "steps": (20, 28)}
    assert "sum_i ceil(r_i) = 5" in capsys.readouterr().out


# ------------------------------------------------------------------- the trainer
# Class 0 in every image, class 1 in 1 of 10 (t 0.5: sqrt(5) = 2.24 -> 3 times), class 2 in
# 3 of 10 (sqrt(5 / 3) = 1.29 -> 2 times); image 10 has no annotations and is dropped.
TINY_CLASS_SETS = [{0, 1}, {0, 2}, {0, 2}, {0, 2}] + [{0}] * 6 + [set()]
TINY_COUNTS = [3, 2, 2, 2] + [1] * 6


@pytest.fixture
def tiny_dataset(tmp_path):
    name = f"rs_test_ceil_rfs_{uuid.uuid4().hex[:8]}"
    dicts = []
    for i, classes in enumerate(TINY_CLASS_SETS):
        file_name = str(tmp_path / f"{i}.png")
        cv2.imwrite(file_name, np.full((32, 40, 3), 30 * (i % 8), dtype=np.uint8))
        dicts.append({"file_name": file_name, "image_id": i, "height": 32, "width": 40,
                      "annotations": [{"bbox": [2 + 3 * c, 2, 12 + 3 * c, 20],
                                       "bbox_mode": BoxMode.XYXY_ABS, "category_id": c}
                                      for c in sorted(classes)]})
    DatasetCatalog.register(name, lambda: [dict(d) for d in dicts])
    MetadataCatalog.get(name).thing_classes = ["a", "b", "c"]
    yield name
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


def _cfg(dataset, rounding="ceil", sampler="RepeatFactorTrainingSampler"):
    cfg = get_cfg()
    add_rs_config(cfg)
    cfg.DATASETS.TRAIN = (dataset,)
    cfg.DATALOADER.SAMPLER_TRAIN = sampler
    cfg.DATALOADER.REPEAT_THRESHOLD = 0.5
    cfg.DATALOADER.REPEAT_ROUNDING = rounding
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.SOLVER.IMS_PER_BATCH = 2
    cfg.INPUT.MIN_SIZE_TRAIN = (32,)
    cfg.INPUT.MAX_SIZE_TRAIN = 64
    cfg.SEED = 5
    return cfg


def test_default_rounding_is_detectron2s():
    cfg = get_cfg()
    add_rs_config(cfg)
    assert cfg.DATALOADER.REPEAT_ROUNDING == "stochastic"


def test_trainer_builds_the_ceil_sampler(tiny_dataset, monkeypatch):
    calls = []
    real = trainer_module.build_detection_train_loader

    def spy(cfg, **kwargs):
        calls.append(kwargs)
        return real(cfg, **kwargs)

    monkeypatch.setattr(trainer_module, "build_detection_train_loader", spy)
    loader = RSTrainer.build_train_loader(_cfg(tiny_dataset))
    (kwargs,) = calls
    sampler, dataset = kwargs["sampler"], kwargs["dataset"]
    assert type(sampler) is CeilRepeatFactorTrainingSampler
    assert [d["image_id"] for d in dataset] == list(range(10))  # the empty image dropped
    epoch = stream(sampler, 0, sum(TINY_COUNTS))
    assert Counter(dataset[i]["image_id"] for i in epoch) == Counter(dict(enumerate(TINY_COUNTS)))
    batch = next(iter(loader))
    assert len(batch) == 2 and all("instances" in d for d in batch)


def test_trainer_stochastic_is_detectron2s_loader(tiny_dataset, monkeypatch):
    import detectron2.engine.defaults as d2_defaults

    calls = []
    monkeypatch.setattr(d2_defaults, "build_detection_train_loader", lambda cfg: calls.append(cfg))
    monkeypatch.setattr(trainer_module, "build_detection_train_loader",
                        lambda *a, **k: pytest.fail("the ceil path was taken"))
    cfg = _cfg(tiny_dataset, rounding="stochastic")
    RSTrainer.build_train_loader(cfg)
    assert calls == [cfg]


def test_bad_rounding_raises(tiny_dataset):
    with pytest.raises(ValueError, match=r"DATALOADER\.REPEAT_ROUNDING.*stochastic.*ceil"):
        RSTrainer.build_train_loader(_cfg(tiny_dataset, rounding="round"))
    with pytest.raises(ValueError, match=r"REPEAT_ROUNDING 'ceil'.*SAMPLER_TRAIN.*TrainingSampler"):
        RSTrainer.build_train_loader(_cfg(tiny_dataset, sampler="TrainingSampler"))
