"""benchmarks/bench_train_step.py: a smoke run of the timing at 128 px (CPU)."""
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "benchmarks"))
import bench_train_step as bench  # noqa: E402


def test_batch_is_fixed_by_its_seed():
    a = bench.make_batch(3, 2, 64, 80, 5, "polygon")
    b = bench.make_batch(3, 2, 64, 80, 5, "bitmask")
    for x, y in zip(a, b):
        assert x["image"].shape == (3, 64, 80) and x["image"].dtype == torch.uint8
        assert torch.equal(x["image"], y["image"])
        assert torch.equal(x["instances"].gt_boxes.tensor, y["instances"].gt_boxes.tensor)
        assert len(x["instances"]) == 5 and int(x["instances"].gt_classes.max()) < 80
        assert y["instances"].gt_masks.tensor.shape == (5, 64, 80)
        boxes = x["instances"].gt_boxes.tensor
        assert (boxes[:, 2] <= 80).all() and (boxes[:, 3] <= 64).all()
    assert not torch.equal(a[0]["image"], bench.make_batch(4, 1, 64, 80, 5)[0]["image"])


def test_one_round_of_the_faster_rcnn_pair_at_128px():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        report = bench.run_benchmark(pairs=("faster",), height=128, width=160, batch_size=1,
                                     num_boxes=3, warmup=0, rounds=1, torchvision_pooling=True)
    finally:
        torch.set_num_threads(threads)
    (r,) = report["results"]
    assert r["stock_s_per_iter"] > 0 and r["rs_s_per_iter"] > 0
    assert r["ratio_min"] <= r["ratio_median"] <= r["ratio_max"] and r["ratio_iqr"] == 0
    assert np.isfinite(list(r["stock_last_losses"].values())).all()
    assert "loss_roi_rank" in r["rs_last_losses"] and "loss_cls" in r["stock_last_losses"]
    # Stock samples 512 RoIs per image; RS keeps every proposal plus the GT boxes.
    assert r["stock_box_rois_per_image"] == 512
    assert r["rs_box_rois_per_image"] > 512 and r["stock_mask_rois_per_image"] is None
    table = bench.format_markdown(report)
    assert "| Faster R-CNN R-50-FPN |" in table and "compiled ops" in table
    assert report["environment"]["torch"] == torch.__version__
    # The third model: RS with torchvision's ROIAlign, timed in the same rotation.
    assert r["rs_tv_s_per_iter"] > 0 and len(r["ratios_tv"]) == 1
    assert "torchvision's ROIAlign" in table
