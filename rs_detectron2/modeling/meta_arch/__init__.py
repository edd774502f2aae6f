"""One-stage RS detectors (RetinaNet meta-architecture), registered on import."""
from .atss import atss_match
from .rs_retinanet import ASSIGNERS, RS_ONE_STAGE_HEAD_REGISTRY, RSATSSHead, RSRetinaNet

__all__ = ["ASSIGNERS", "RS_ONE_STAGE_HEAD_REGISTRY", "RSATSSHead", "RSRetinaNet", "atss_match"]
