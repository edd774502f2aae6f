"""Config keys of rs_detectron2, added to a detectron2 config by :func:`add_rs_config`."""
from detectron2.config import CfgNode as CN


def add_rs_config(cfg: CN) -> None:
    """Add rs_detectron2's keys to ``cfg``, each in the node of the part it configures, with
    the published defaults: the RS loss and RS R-CNN recipe (``cfg.MODEL.RS``), the one-stage
    RS detectors (``cfg.MODEL.RS_RETINANET``), PAA's assignment (``cfg.MODEL.PAA``), YOLACT
    (``cfg.MODEL.YOLACT``), SOLOv2 (``cfg.MODEL.SOLOV2``), the
    repeat factor sampler's rounding (``cfg.DATALOADER.REPEAT_ROUNDING``), the training
    augmentations (``cfg.INPUT.AUGMENTATIONS``), the one-stage FPN's P6/P7
    (``cfg.MODEL.FPN.P6P7_TOP_BLOCK``), the sparse CPU ROIAlign of each pooler
    (``cfg.MODEL.ROI_*_HEAD.POOLER_SPARSE_CPU``), CARAFE (``cfg.MODEL.CARAFE``), oLRP
    (``cfg.TEST.OLRP``) and the built-in synthetic datasets (``cfg.DATASETS.RS_SYNTHETIC*``).
    Keys of earlier releases that moved raise a KeyError naming the new key when a config
    sets them. The RS-RPN's loss weight is detectron2's ``MODEL.RPN.LOSS_WEIGHT`` (the RS
    configs set the published 0.2)."""
    cfg.MODEL.RS = CN()
    # Smoothing δ of the step function in RS Loss (0 = hard step).
    cfg.MODEL.RS.DELTA = 0.5
    # The candidates each RS Loss ranks together: "process" (published: the images of this
    # process's batch, so the loss changes with --num-gpus) or "global" (the images of all
    # processes; the box and mask losses' score-weighted means too). The same on one process.
    # Read by every RS head (RPN, RoI box predictor and mask head, one-stage).
    cfg.MODEL.RS.RANKING_POOL = "process"
    # The classification loss of every RS head: "rank_sort" (RS Loss), "ap" (AP Loss, Chen et
    # al. 2019; the box loss stays RS's balanced score-weighted GIoU) or "alrp" (aLRP Loss,
    # Oksuz et al. 2020: its own regression part with the self-balancing weight).
    cfg.MODEL.RS.RANKING_LOSS = "rank_sort"
    # Smoothing δ of AP Loss and aLRP Loss (published: 1.0; DELTA is RS Loss's).
    cfg.MODEL.RS.AP_DELTA = 1.0
    # aLRP's self-balancing weight (50 at first) is updated every this many iterations: one
    # epoch (published 3665: COCO train2017 at batch 32).
    cfg.MODEL.RS.ALRP_SB_PERIOD = 3665
    # At most this many positive RoIs (a random subset, with their weights) feed the mask head.
    cfg.MODEL.RS.MAX_MASK_ROIS = 200
    # Rescale the mask loss so that its value equals the RoI head's RS loss (the published
    # recipe; every config sets or keeps it). False: the score-weighted Dice loss enters
    # with weight 1 (an option measured in docs/rs_vs_stock.md, sections 1 and 4).
    cfg.MODEL.RS.BALANCE_MASK_LOSS = True

    # Training warns when an RS ranking loss (loss_rank, loss_rpn_rank / MODEL.RPN.LOSS_WEIGHT,
    # loss_roi_rank[_stageK]) is still >= THRESHOLD (median of the last 20 iterations) at
    # iteration PERIOD, 2 x PERIOD, ... (rs_detectron2.engine.RankingStallCheck): such a head
    # has not started to rank. PERIOD 0 turns the check off.
    cfg.MODEL.RS.RANKING_CHECK = CN()
    cfg.MODEL.RS.RANKING_CHECK.PERIOD = 500
    cfg.MODEL.RS.RANKING_CHECK.THRESHOLD = 0.95
    # Pooler-level, for any RoI heads (detectron2's too): compute the head's ROIAlign on the
    # CPU as one multi-threaded sparse matrix product (rs_detectron2.layers.SparseROIAlign)
    # instead of torchvision's one-thread loop over the RoIs; same results up to float
    # summation order; other devices use torchvision. The RS RoI heads pool all proposals
    # (~2x the RoIs of detectron2's sampled 512 per image), so the RS configs turn it on.
    # Applied by RSTrainer.build_model (rs_detectron2.modeling.use_sparse_cpu_poolers).
    for node in ("ROI_BOX_HEAD", "ROI_MASK_HEAD", "ROI_KEYPOINT_HEAD"):
        cfg.MODEL[node].POOLER_SPARSE_CPU = False

    # RSRetinaNet (one-stage RS detectors on detectron2's RetinaNet meta-architecture).
    cfg.MODEL.RS_RETINANET = CN()
    # Anchor assignment: "atss" (RS-ATSS) or "iou" (detectron2's RetinaNet matcher with
    # MODEL.RETINANET.IOU_THRESHOLDS / IOU_LABELS: RS-RetinaNet).
    cfg.MODEL.RS_RETINANET.ASSIGNER = "atss"
    # ATSS: candidate anchors per pyramid level and ground truth (closest centres).
    cfg.MODEL.RS_RETINANET.ATSS_TOPK = 9
    # The head, by name in RS_ONE_STAGE_HEAD_REGISTRY: "RSATSSHead" (a learnable scale per
    # level on the box deltas, no centerness) or detectron2's "RetinaNetHead".
    cfg.MODEL.RS_RETINANET.HEAD_NAME = "RSATSSHead"
    # PAA's assignment and test-time score voting (meta-architectures RSPAA and its
    # stock-loss twin PAA, rs_detectron2.modeling.meta_arch.paa); published values.
    cfg.MODEL.PAA = CN()
    # Candidates per pyramid level and ground truth that the Gaussian mixture splits.
    cfg.MODEL.PAA.TOPK = 9
    # An anchor whose highest IoU with a ground truth reaches this is its candidate.
    cfg.MODEL.PAA.CANDIDATE_IOU = 0.1
    # Move each detection kept by NMS to the score- and overlap-weighted mean of the
    # candidate boxes of its class (IoU > 0.01, weights exp(-(1 - IoU)^2 / 0.025) x score).
    cfg.MODEL.PAA.SCORE_VOTING = True
    # YOLACT (meta-architectures RSYOLACT and its stock-loss twin YOLACT,
    # rs_detectron2.modeling.meta_arch.yolact); classes, IoU matcher, box coder and test
    # thresholds are detectron2's MODEL.RETINANET keys. Published values.
    cfg.MODEL.YOLACT = CN()
    # Mask prototypes of the prototype net, and mask coefficients per anchor.
    cfg.MODEL.YOLACT.NUM_PROTOS = 32
    # Convs (3x3 + ReLU) of the head shared by the class, box and coefficient branches.
    cfg.MODEL.YOLACT.NUM_HEAD_CONVS = 1
    # Fast NMS at test time: the highest-scoring candidates kept per class.
    cfg.MODEL.YOLACT.NMS_TOP_K = 200
    # The stock losses (YOLACT only; RS-YOLACT's losses need no weights): hard negatives
    # per positive of the OHEM cross entropy, weights of the smooth L1 box loss and of the
    # box-area-normalised mask BCE, and the random positives per image with a mask loss.
    cfg.MODEL.YOLACT.NEG_POS_RATIO = 3.0
    cfg.MODEL.YOLACT.BOX_LOSS_WEIGHT = 1.5
    cfg.MODEL.YOLACT.MASK_LOSS_WEIGHT = 6.125
    cfg.MODEL.YOLACT.MAX_MASKS_TO_TRAIN = 100
    # SOLOv2 (meta-architectures RSSOLOv2 and the stock SOLOv2,
    # rs_detectron2.modeling.meta_arch.solov2); published values (ranksort_solov2_r101_fpn_3x).
    cfg.MODEL.SOLOV2 = CN()
    cfg.MODEL.SOLOV2.NUM_CLASSES = 80
    # The FPN maps of the five SOLO levels (P2 is resized to P3's size, P6 to P5's).
    cfg.MODEL.SOLOV2.IN_FEATURES = ["p2", "p3", "p4", "p5", "p6"]
    # Grid cells per side of each level, and the sqrt(box area) range (input pixels) of the
    # objects each level learns (both ends included: an object can be in two levels).
    cfg.MODEL.SOLOV2.NUM_GRIDS = [40, 36, 24, 16, 12]
    cfg.MODEL.SOLOV2.SCALE_RANGES = [[1, 96], [48, 192], [96, 384], [192, 768], [384, 2048]]
    # The centre region of an object: sigma x its box around its mask's mass centre.
    cfg.MODEL.SOLOV2.SIGMA = 0.2
    # Width and depth of the category and kernel towers; E, the mask features' channels
    # (and kernel length); width of the mask feature branch's convs (light: 256, 2, 128, 128).
    cfg.MODEL.SOLOV2.SEG_FEAT_CHANNELS = 512
    cfg.MODEL.SOLOV2.STACKED_CONVS = 4
    cfg.MODEL.SOLOV2.INS_OUT_CHANNELS = 256
    cfg.MODEL.SOLOV2.MASK_FEAT_CHANNELS = 128
    # The stock losses (SOLOv2 only; RSSOLOv2's need no weights).
    cfg.MODEL.SOLOV2.FOCAL_LOSS_ALPHA = 0.25
    cfg.MODEL.SOLOV2.FOCAL_LOSS_GAMMA = 2.0
    cfg.MODEL.SOLOV2.DICE_LOSS_WEIGHT = 3.0
    # Inference: category score threshold, mask threshold, the best NMS_PRE before Matrix
    # NMS (NMS_KERNEL "gaussian" or "linear", NMS_SIGMA), decayed-score threshold.
    cfg.MODEL.SOLOV2.SCORE_THRESH_TEST = 0.2
    cfg.MODEL.SOLOV2.MASK_THRESH_TEST = 0.5
    cfg.MODEL.SOLOV2.NMS_PRE_TEST = 500
    cfg.MODEL.SOLOV2.NMS_KERNEL = "gaussian"
    cfg.MODEL.SOLOV2.NMS_SIGMA = 2.0
    cfg.MODEL.SOLOV2.UPDATE_THRESH_TEST = 0.05
    # At most this many (cell, class) candidates above SCORE_THRESH_TEST get a mask (the
    # best by category score); 0: all of them (published).
    cfg.MODEL.SOLOV2.TOPK_CANDIDATES_TEST = 0
    # P6/P7 of the one-stage FPN backbones (build_retinanet_*_fpn_backbone of
    # rs_detectron2.modeling.backbone; detectron2's own builders do not read it):
    # "P5_NO_RELU" (published ATSS: P6 from P5's output, no ReLU before P7) or "RES5_RELU"
    # (detectron2's RetinaNet).
    cfg.MODEL.FPN.P6P7_TOP_BLOCK = "P5_NO_RELU"

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
    _add_synthetic_dataset_keys(cfg)

    for old, new in _RENAMED_KEYS:
        if not cfg.key_is_renamed(old):  # add_rs_config may be called twice on one config
            cfg.register_renamed_key(old, new, message=_RENAMED_MESSAGE)

    # How DATALOADER.SAMPLER_TRAIN "RepeatFactorTrainingSampler" rounds an image's repeat
    # factor r each epoch: "stochastic" (detectron2: floor(r), plus 1 with probability of the
    # fraction) or "ceil" (published, mmdetection's ClassBalancedDataset: ceil(r) every
    # epoch; rs_detectron2.data.repeat_factor_sampler). Read by RSTrainer.build_train_loader.
    cfg.DATALOADER.REPEAT_ROUNDING = "stochastic"

    # The loaders' augmentations: "detectron2" (its DatasetMapper: ResizeShortestEdge + flip)
    # or "yolact" (the published RS-YOLACT's: photometric distortion, expand, min-IoU crop,
    # resize to MIN_SIZE_TEST x MIN_SIZE_TEST, flip; rs_detectron2.data.yolact_augmentations).
    # Read by RSTrainer.build_train_loader and build_test_loader.
    cfg.INPUT.AUGMENTATIONS = "detectron2"

    # oLRP evaluation (rs_detectron2.evaluation.OLRPEvaluator), next to COCO / LVIS AP.
    cfg.TEST.OLRP = CN()
    # Evaluate oLRP (and write each class's optimal score threshold) in RSTrainer.test.
    cfg.TEST.OLRP.ENABLED = True


# Keys moved to the node of the part they configure (release 0.2). A config that still sets
# an old name fails to merge with a KeyError naming the new one.
_RENAMED_KEYS = (
    ("MODEL.RS.RPN_HEAD_WEIGHT", "MODEL.RPN.LOSS_WEIGHT"),
    ("MODEL.RS.SPARSE_CPU_ROI_ALIGN", "MODEL.ROI_BOX_HEAD.POOLER_SPARSE_CPU"),
    ("MODEL.RS.ONE_STAGE_ASSIGNER", "MODEL.RS_RETINANET.ASSIGNER"),
    ("MODEL.RS.ATSS_TOPK", "MODEL.RS_RETINANET.ATSS_TOPK"),
    ("MODEL.RS.ONE_STAGE_HEAD", "MODEL.RS_RETINANET.HEAD_NAME"),
    ("MODEL.RS.P6P7_TOP_BLOCK", "MODEL.FPN.P6P7_TOP_BLOCK"),
)
_RENAMED_MESSAGE = ("rs_detectron2 0.2 moved it to the node of the part it configures "
                    "(README, 'Config keys'); MODEL.RS.SPARSE_CPU_ROI_ALIGN is now one key per "
                    "pooler (ROI_BOX_HEAD / ROI_MASK_HEAD / ROI_KEYPOINT_HEAD.POOLER_SPARSE_CPU)")


def _add_synthetic_dataset_keys(cfg: CN) -> None:
    """``cfg.DATASETS.<FAMILY>`` for each built-in synthetic family: its generation keys,
    defaulting to ``rs_detectron2.data.RS_SYNTHETIC_DEFAULTS`` (the sizes of the shipped
    configs), which importing ``rs_detectron2.data`` registers: one place for the numbers."""
    from .data import RS_SYNTHETIC_DEFAULTS, RS_SYNTHETIC_FAMILIES  # (imported below)

    for family in RS_SYNTHETIC_FAMILIES:
        node = cfg.DATASETS[family.upper()] = CN()
        # Cache folder of the generated dataset; "" = $DETECTRON2_DATASETS or ./datasets.
        node.ROOT = ""
        # Number of generated training / validation images.
        node.NUM_TRAIN = RS_SYNTHETIC_DEFAULTS.num_train
        node.NUM_VAL = RS_SYNTHETIC_DEFAULTS.num_val
        # Side of the square generated images, in pixels (object sizes scale with it).
        node.IMAGE_SIZE = RS_SYNTHETIC_DEFAULTS.image_size
        # Seed of the generator; the same keys always give the same images.
        node.SEED = RS_SYNTHETIC_DEFAULTS.seed


# Whoever configures an RS model gets its parts registered with detectron2 (heads, built-in
# datasets, rs_pretrained:// weights). Imported last: these modules may import this one.
from . import data, modeling, pretrained_weights  # noqa: E402,F401
