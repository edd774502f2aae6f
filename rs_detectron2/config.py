"""Config keys of rs_detectron2, added to a detectron2 config by :func:`add_rs_config`."""
from detectron2.config import CfgNode as CN


def add_rs_config(cfg: CN) -> None:
    """Add the RS Loss keys (``cfg.MODEL.RS``), the evaluation keys (``cfg.TEST.OLRP``) and
    the built-in synthetic dataset keys (``cfg.DATASETS.RS_SYNTHETIC``,
    ``cfg.DATASETS.RS_SYNTHETIC_HARD``, ``cfg.DATASETS.RS_SYNTHETIC_LVIS``) to ``cfg``,
    with the published defaults."""
    cfg.MODEL.RS = CN()
    # Smoothing δ of the step function in RS Loss (0 = hard step).
    cfg.MODEL.RS.DELTA = 0.5
    # Weight of all three RS-RPN losses (rank, sort, box).
    cfg.MODEL.RS.RPN_HEAD_WEIGHT = 0.2
    # At most this many positive RoIs (a random subset, with their weights) feed the mask head.
    cfg.MODEL.RS.MAX_MASK_ROIS = 200
    # Rescale the mask loss so that its value equals the RoI head's RS loss (the published
    # recipe; every config sets or keeps it). False: the score-weighted Dice loss enters
    # with weight 1 (an option measured in docs/rs_vs_stock.md, sections 1 and 4).
    cfg.MODEL.RS.BALANCE_MASK_LOSS = True

    # Training warns when an RS ranking loss (loss_rank, loss_rpn_rank / RPN_HEAD_WEIGHT,
    # loss_roi_rank[_stageK]) is still >= THRESHOLD (median of the last 20 iterations) at
    # iteration PERIOD, 2 x PERIOD, ... (rs_detectron2.engine.RankingStallCheck): such a head
    # has not started to rank. PERIOD 0 turns the check off.
    cfg.MODEL.RS.RANKING_CHECK = CN()
    cfg.MODEL.RS.RANKING_CHECK.PERIOD = 500
    cfg.MODEL.RS.RANKING_CHECK.THRESHOLD = 0.95
    # RS RoI heads pool all proposals (~2x the RoIs of detectron2's sampled 512 per image).
    # On the CPU, compute their ROIAlign as one multi-threaded sparse matrix product
    # (rs_detectron2.layers.SparseROIAlign) instead of torchvision's one-thread loop over
    # the RoIs; same results up to float summation order. Other devices use torchvision.
    cfg.MODEL.RS.SPARSE_CPU_ROI_ALIGN = True

    # RSRetinaNet (one-stage): anchor assignment, "atss" (RS-ATSS) or "iou" (detectron2's
    # RetinaNet matcher with MODEL.RETINANET.IOU_THRESHOLDS / IOU_LABELS: RS-RetinaNet).
    cfg.MODEL.RS.ONE_STAGE_ASSIGNER = "atss"
    # ATSS: candidate anchors per pyramid level and ground truth (closest centres).
    cfg.MODEL.RS.ATSS_TOPK = 9
    # RSRetinaNet's head, by name in RS_ONE_STAGE_HEAD_REGISTRY: "RSATSSHead" (a learnable
    # scale per level on the box deltas, no centerness) or detectron2's "RetinaNetHead".
    cfg.MODEL.RS.ONE_STAGE_HEAD = "RSATSSHead"
    # P6/P7 of the one-stage FPN backbones (build_retinanet_*_fpn_backbone of
    # rs_detectron2.modeling.backbone): "P5_NO_RELU" (published ATSS: P6 from P5's output,
    # no ReLU before P7) or "RES5_RELU" (detectron2's RetinaNet).
    cfg.MODEL.RS.P6P7_TOP_BLOCK = "P5_NO_RELU"

    # RSCascadeROIHeads: the published (mmdetection) cascade where it needs code; each
    # default is the published behaviour. False / True / False would be detectron2's.
    cfg.MODEL.RS.CASCADE = CN()
    # Scale the gradient that each stage's pooled RoI features send back to the backbone by
    # 1 / number of stages, as detectron2's CascadeROIHeads does. The published RS-Cascade
    # sums the stage losses with weights 1, 1, 1 and does not scale: False.
    cfg.MODEL.RS.CASCADE.SCALE_GRADIENT = False
    # At test time average the stages' class logits and apply the sigmoid to the mean
    # (published). False: average the stages' scores (detectron2).
    cfg.MODEL.RS.CASCADE.AVERAGE_LOGITS = True
    # In training, every stage after the first gets the exact ground-truth boxes as
    # proposals, in place of the previous stage's regressed copies of them (published:
    # add_gt_as_proposals in each stage). False: only the first stage gets them (detectron2).
    cfg.MODEL.RS.CASCADE.GT_PROPOSALS_ALL_STAGES = True

    # CARAFE upsampling in the FPN (build_resnet_carafe_fpn_backbone, the published "+"
    # models); published values (mmdet's FPN_CARAFE in the RS configs).
    cfg.MODEL.CARAFE = CN()
    # Side k_up of each output pixel's reassembly kernel (odd).
    cfg.MODEL.CARAFE.UP_KERNEL = 5
    # Kernel side of the content encoder conv that predicts the reassembly kernels.
    cfg.MODEL.CARAFE.ENCODER_KERNEL = 3
    # Channels of the 1x1 channel compressor that feeds the content encoder.
    cfg.MODEL.CARAFE.COMPRESSED_CHANNELS = 64
    # Channel groups; each group of channels gets its own reassembly kernels.
    cfg.MODEL.CARAFE.GROUPS = 1

    # The built-in synthetic datasets, one node per family (rs_detectron2.data.builtin):
    # RS_SYNTHETIC: shapes (rs_synthetic_train / _val);
    # RS_SYNTHETIC_HARD: look-alike glyphs on cluttered backgrounds (rs_synthetic_hard_*);
    # RS_SYNTHETIC_LVIS: long-tailed, LVIS format (rs_synthetic_lvis_*); its tail scales
    # with NUM_TRAIN.
    for key, image_size in (("RS_SYNTHETIC", 256), ("RS_SYNTHETIC_HARD", 192),
                            ("RS_SYNTHETIC_LVIS", 192)):
        _add_synthetic_dataset_keys(cfg, key, image_size)

    # oLRP evaluation (rs_detectron2.evaluation.OLRPEvaluator), next to COCO / LVIS AP.
    cfg.TEST.OLRP = CN()
    # Evaluate oLRP (and write each class's optimal score threshold) in RSTrainer.test.
    cfg.TEST.OLRP.ENABLED = True


def _add_synthetic_dataset_keys(cfg: CN, key: str, image_size: int) -> None:
    """``cfg.DATASETS.<key>``: the generation keys of one built-in synthetic family."""
    node = cfg.DATASETS[key] = CN()
    # Cache folder of the generated dataset; "" = $DETECTRON2_DATASETS or ./datasets.
    node.ROOT = ""
    # Number of generated training / validation images.
    node.NUM_TRAIN = 1000
    node.NUM_VAL = 200
    # Side of the square generated images, in pixels (object sizes scale with it).
    node.IMAGE_SIZE = image_size
    # Seed of the generator; the same keys always give the same images.
    node.SEED = 0
