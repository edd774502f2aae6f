"""benchmarks/lr_robustness.py: what it reads from a run's log and metrics."""
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
import lr_robustness as L  # noqa: E402

LOG = """\
[x d2.evaluation.testing]: copypaste: Task: bbox
[x d2.evaluation.testing]: copypaste: AP,AP50,AP75,APs,APm,APl,APr,APc,APf
[x d2.evaluation.testing]: copypaste: 61.3446,77.1231,69.3392,62.0591,60.4421,-100.0000,51.5,62.4,72.5
[x d2.evaluation.testing]: copypaste: Task: segm
[x d2.evaluation.testing]: copypaste: AP,AP50,AP75,APs,APm,APl
[x d2.evaluation.testing]: copypaste: 65.8749,76.4,71.7,60.9,74.9,nan
[x d2.evaluation.testing]: copypaste: Task: bbox_oLRP
[x d2.evaluation.testing]: copypaste: oLRP,oLRP_loc,oLRP_FP,oLRP_FN
[x d2.evaluation.testing]: copypaste: 49.8482,10.7,25.8,18.0
"""


def test_final_ap_reads_coco_and_lvis_tables_and_skips_olrp():
    assert L.final_ap(LOG) == {"bbox": 61.3446, "segm": 65.8749}
    assert L.final_ap("no tables") == {}


def test_ranking_errors_median_of_last_window_and_rpn_scaled(tmp_path):
    path = tmp_path / "metrics.json"
    rows = [{"iteration": i, "loss_roi_rank": 0.9 - 0.01 * i, "loss_rpn_rank": 0.1,
             "loss_roi_box": 1.0} for i in range(30)]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    errors = L.ranking_errors(str(path), rpn_weight=0.2, window=5)
    assert set(errors) == {"loss_roi_rank", "loss_rpn_rank"}
    assert abs(errors["loss_roi_rank"] - (0.9 - 0.01 * 27)) < 1e-9
    assert abs(errors["loss_rpn_rank"] - 0.5) < 1e-9


def test_runs_with_overrides_have_their_own_name():
    cfg = "configs/Synthetic/rs_mask_rcnn_R_18_FPN_hard.yaml"
    assert L.run_tag(cfg, 0.06, []) == "rs_mask_rcnn_R_18_FPN_hard-lr0.06"
    assert L.run_tag(cfg, 0.06, ["MODEL.ROI_BOX_HEAD.NAME", "FastRCNNConvFCHead"]) != L.run_tag(cfg, 0.06, [])
