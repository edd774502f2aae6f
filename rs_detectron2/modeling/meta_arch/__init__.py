"""One-stage RS detectors (RetinaNet meta-architecture), registered on import."""
from .atss import atss_match
from .paa import PAA, RSPAA, PAAAssignment, candidate_scores, paa_candidates, paa_select
from .paa_gmm import fit_two_gaussians
from .padded_extent import anchors_in_padded_extent
from .rs_retinanet import ASSIGNERS, RS_ONE_STAGE_HEAD_REGISTRY, RSATSSHead, RSRetinaNet
from .yolact import RSYOLACT, YOLACT, ProtoNet, YOLACTHead, YOLACTMasks
from .solov2 import RSSOLOv2, SOLOv2

__all__ = ["ASSIGNERS", "RS_ONE_STAGE_HEAD_REGISTRY", "RSATSSHead", "RSRetinaNet", "atss_match",
           "PAA", "RSPAA", "PAAAssignment", "candidate_scores", "paa_candidates", "paa_select",
           "fit_two_gaussians", "anchors_in_padded_extent", "RSYOLACT", "YOLACT", "ProtoNet",
           "YOLACTHead", "YOLACTMasks", "RSSOLOv2", "SOLOv2"]
