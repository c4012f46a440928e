"""Every config key with its default and a one-line description.

The type of each default is the type the key accepts (``None`` accepts anything). Model-specific
sections (MODEL.IDIP, MODEL.FCOS, MODEL.CONDINST) live further down. The defaults are IDIP's COCO
settings; the YAML files in configs/ change what differs.
"""

from .config import CfgNode as CN

_C = CN()

# ------------------------------------------------------------------------------------------------
# Model
# ------------------------------------------------------------------------------------------------
_C.MODEL = CN()
_C.MODEL.META_ARCHITECTURE = "IDIP"  # model class: "IDIP" or "CondInst"
_C.MODEL.DEVICE = "auto"  # "auto" (cuda when available, else cpu), "cpu", "cuda", "cuda:1" ...
_C.MODEL.WEIGHTS = ""  # checkpoint (.pth) or backbone weights (.pth torchvision / .pkl detectron2)
_C.MODEL.PIXEL_MEAN = [123.675, 116.28, 103.53]  # RGB pixel mean subtracted from the input
_C.MODEL.PIXEL_STD = [58.395, 57.12, 57.375]  # RGB pixel std dividing the input
_C.MODEL.USE_REFERENCE_OPS = (
    False  # run the plain-PyTorch reference ops instead of idip._C (benchmarks)
)

_C.MODEL.BACKBONE = CN()
_C.MODEL.BACKBONE.NAME = "ResNet"  # backbone family
_C.MODEL.BACKBONE.FREEZE_AT = 2  # 0 nothing frozen, 1 stem, 2 stem+res2, ... 5 everything

_C.MODEL.RESNETS = CN()
_C.MODEL.RESNETS.DEPTH = 50  # 18, 34, 50 or 101
_C.MODEL.RESNETS.NORM = "FrozenBN"  # "FrozenBN", "BN", "SyncBN", "GN"
_C.MODEL.RESNETS.STRIDE_IN_1X1 = False  # True for MSRA caffe-style weights (stride in the 1x1 conv)
_C.MODEL.RESNETS.OUT_FEATURES = ["res3", "res4", "res5"]  # stages returned to the FPN
_C.MODEL.RESNETS.WIDTH_PER_GROUP = 64  # base width of the bottleneck 3x3 (64 for plain ResNets)
_C.MODEL.RESNETS.STEM_OUT_CHANNELS = 64  # channels of the 7x7 stem conv
_C.MODEL.RESNETS.RES2_OUT_CHANNELS = (
    0  # res2 output channels, doubled per stage; 0: standard (64 for R18/34, 256 for R50+)
)

_C.MODEL.FPN = CN()
_C.MODEL.FPN.IN_FEATURES = ["res3", "res4", "res5"]  # backbone stages fed to the FPN
_C.MODEL.FPN.OUT_CHANNELS = 256  # channels of every FPN level
_C.MODEL.FPN.NORM = ""  # "" (none), "GN", "BN" on the lateral and output convs
_C.MODEL.FPN.TOP_BLOCK = ""  # "" or "P6P7" (two extra levels from P5, as FCOS/CondInst)

# ------------------------------------------------------------------------------------------------
# IDIP (MODEL.IDIP): diffusion box denoising head + RoI mask head
# ------------------------------------------------------------------------------------------------
_C.MODEL.IDIP = CN()
_C.MODEL.IDIP.NUM_CLASSES = 80  # foreground classes (sigmoid classification, no background)
_C.MODEL.IDIP.IN_FEATURES = ["p3", "p4", "p5"]  # FPN levels the RoI heads pool from
_C.MODEL.IDIP.NUM_PROPOSALS = 300  # boxes denoised per image (training, and inference unless below)
# boxes denoised per image at inference; 0: NUM_PROPOSALS. The number of boxes is free at test
# time (DiffusionDet's "dynamic boxes"): more boxes than in training find more objects.
_C.MODEL.IDIP.NUM_PROPOSALS_TEST = 0
_C.MODEL.IDIP.HIDDEN_DIM = 256  # proposal feature width (must equal the FPN channels)
_C.MODEL.IDIP.NUM_HEADS = 6  # refinement stages of the dynamic head
_C.MODEL.IDIP.DIM_DYNAMIC = 64  # inner width of DynamicConv's generated matrices
_C.MODEL.IDIP.DIM_FEEDFORWARD = 2048  # hidden width of each stage's FFN
_C.MODEL.IDIP.NHEADS = 8  # self-attention heads per stage
_C.MODEL.IDIP.DROPOUT = 0.0  # dropout in the stages (0 in the authors' code)
_C.MODEL.IDIP.NUM_CLS = 1  # hidden layers of the shared classifier
_C.MODEL.IDIP.NUM_REG = 3  # hidden layers of the shared box regressor
_C.MODEL.IDIP.POOLER_RESOLUTION = 7  # RoIAlign output side for the box head
_C.MODEL.IDIP.SAMPLING_RATIO = 2  # RoIAlign samples per bin side for the box head
_C.MODEL.IDIP.MASK_POOLER_RESOLUTION = 14  # RoIAlign output side for the mask head (masks are 2x)
_C.MODEL.IDIP.MASK_SAMPLING_RATIO = (
    2  # RoIAlign samples per bin side for the mask head (0: adaptive; the authors' 2)
)
_C.MODEL.IDIP.MASK_NUM_CONVS = 4  # 3x3 convs of the mask head
_C.MODEL.IDIP.MASK_NORM = "BN"  # norm of the mask head convs: "BN" (authors'), "GN" or ""
# BN statistics of the mask head per image in training (True: the authors, who run the head once
# per image), or over all images' RoIs together (False)
_C.MODEL.IDIP.MASK_NORM_PER_IMAGE = True
_C.MODEL.IDIP.MASK_WITH_DYNAMIC = True  # DynamicConv on the mask RoI features
_C.MODEL.IDIP.PRIOR_PROB = 0.01  # initial foreground probability of the classifier bias
# Where that prior goes. True (the authors' reset_parameters): every parameter of the box and
# mask heads whose last dimension equals NUM_CLASSES, i.e. the classifier's and the mask
# predictor's biases (for COCO exactly those; with 4 classes also the box regressor's bias, which
# then starts every box 100x too small). False: only those two biases.
_C.MODEL.IDIP.PRIOR_INIT_BY_SHAPE = True
_C.MODEL.IDIP.CLASS_WEIGHT = 2.0  # weight of the focal classification loss (and match cost)
_C.MODEL.IDIP.L1_WEIGHT = 5.0  # weight of the L1 loss on normalised boxes (and match cost)
_C.MODEL.IDIP.GIOU_WEIGHT = 2.0  # weight of the GIoU loss (and match cost)
_C.MODEL.IDIP.MASK_WEIGHT = 5.0  # weight of the Dice mask loss
_C.MODEL.IDIP.ALPHA = 0.25  # focal loss alpha
_C.MODEL.IDIP.GAMMA = 2.0  # focal loss gamma
_C.MODEL.IDIP.OTA_CENTER_RADIUS = 2.5  # SimOTA centre prior radius, in predicted box widths/heights
_C.MODEL.IDIP.OTA_CANDIDATE_TOPK = 10  # SimOTA: IoUs summed to get each GT's dynamic k
_C.MODEL.IDIP.NUM_TIMESTEPS = 1000  # diffusion steps T of the cosine schedule
_C.MODEL.IDIP.SAMPLE_STEP = 3  # DDIM sampling steps at inference
_C.MODEL.IDIP.ETA = 1.0  # DDIM eta (0 deterministic, 1 DDPM-like noise)
_C.MODEL.IDIP.BOX_RENEWAL = True  # replace low-score boxes by fresh random ones between DDIM steps
_C.MODEL.IDIP.RENEWAL_THRESHOLD = 0.5  # score below which a box is renewed
_C.MODEL.IDIP.NMS_THRESH = 0.5  # class-aware NMS IoU threshold at inference
_C.MODEL.IDIP.SCORE_THRESH_TEST = (
    0.0  # detections must score above this (0: keep the top-k, as the authors)
)
_C.MODEL.IDIP.MASK_THRESHOLD = 0.5  # probability threshold of pasted masks
# At inference the mask head pools from the predicted boxes as they are (True, the authors':
# detectron2's detector_postprocess clips them only afterwards), and the masks are pasted into
# the boxes clipped to the image; False pools from the clipped boxes, so that the mask covers
# exactly the region it is pasted into (no stretch for boxes that leave the image).
_C.MODEL.IDIP.MASK_FROM_UNCLIPPED_BOXES = True

# ------------------------------------------------------------------------------------------------
# FCOS (the detector of CondInst); AdelaiDet's names and defaults
# ------------------------------------------------------------------------------------------------
_C.MODEL.FCOS = CN()
_C.MODEL.FCOS.NUM_CLASSES = 80  # number of foreground classes (CondInst reads it from here)
_C.MODEL.FCOS.IN_FEATURES = ["p3", "p4", "p5", "p6", "p7"]  # FPN levels the head runs on
_C.MODEL.FCOS.FPN_STRIDES = [
    8,
    16,
    32,
    64,
    128,
]  # strides of IN_FEATURES (checked against the backbone)
_C.MODEL.FCOS.SIZES_OF_INTEREST = [
    64,
    128,
    256,
    512,
]  # level l takes boxes whose max(l,t,r,b) is in (soi[l-1], soi[l]]
_C.MODEL.FCOS.NUM_CLS_CONVS = 4  # conv3x3+GN+ReLU layers of the classification tower
_C.MODEL.FCOS.NUM_BOX_CONVS = 4  # conv3x3+GN+ReLU layers of the box tower
_C.MODEL.FCOS.NORM = "GN"  # "GN" or "" (no normalisation) in the towers
_C.MODEL.FCOS.PRIOR_PROB = 0.01  # initial foreground probability of the class logits
_C.MODEL.FCOS.USE_SCALE = True  # learnable per-level scale of the box regression
_C.MODEL.FCOS.NORM_REG_TARGETS = True  # regress (l,t,r,b) in units of the level's stride
_C.MODEL.FCOS.CENTERNESS_ON_REG = (
    True  # centerness predicted from the box tower (else the cls tower)
)
_C.MODEL.FCOS.CENTER_SAMPLE = (
    True  # positives only near the object centre (radius POS_RADIUS strides)
)
_C.MODEL.FCOS.POS_RADIUS = 1.5  # centre-sampling radius in strides
# centre of the positive region: each GT mask's centre of mass (True: AdelaiDet's CondInst since
# mid-2020) or the GT box centre (False: plain FCOS)
_C.MODEL.FCOS.CENTER_SAMPLE_ON_MASK = True
_C.MODEL.FCOS.LOSS_ALPHA = 0.25  # focal loss alpha
_C.MODEL.FCOS.LOSS_GAMMA = 2.0  # focal loss gamma
_C.MODEL.FCOS.INFERENCE_TH_TEST = 0.05  # score threshold before NMS
# Inference: no candidates at locations in the batch padding (True makes results depend less on
# the test batch; the authors' code, False, scores every location of the padded batch).
_C.MODEL.FCOS.IGNORE_PADDING_LOCATIONS = False
_C.MODEL.FCOS.THRESH_WITH_CTR = False  # threshold class prob * centerness (True in Base-CondInst)
_C.MODEL.FCOS.PRE_NMS_TOPK_TEST = 1000  # candidates kept per level before NMS
_C.MODEL.FCOS.NMS_TH = 0.6  # class-aware NMS IoU threshold
_C.MODEL.FCOS.POST_NMS_TOPK_TEST = 100  # detections kept per image after NMS

# ------------------------------------------------------------------------------------------------
# CondInst: controller, mask branch, dynamic mask head
# ------------------------------------------------------------------------------------------------
_C.MODEL.CONDINST = CN()
_C.MODEL.CONDINST.MASK_OUT_STRIDE = 4  # stride of the masks for the loss and inference
_C.MODEL.CONDINST.MAX_PROPOSALS = 500  # random positives per GPU used for the mask loss (-1: all)
_C.MODEL.CONDINST.MASK_LOSS_AT_FEAT_STRIDE = (
    False  # Dice loss at the mask branch's stride (8), no upsample: less memory
)
_C.MODEL.CONDINST.MASK_THRESHOLD = 0.5  # probability threshold of the output masks
_C.MODEL.CONDINST.MASK_HEAD = CN()
_C.MODEL.CONDINST.MASK_HEAD.CHANNELS = 8  # hidden channels of the per-instance network
_C.MODEL.CONDINST.MASK_HEAD.NUM_LAYERS = (
    3  # 1x1 layers of the per-instance network (169 params for 8/3)
)
_C.MODEL.CONDINST.MASK_HEAD.DISABLE_REL_COORDS = False  # drop the relative-coordinate inputs
_C.MODEL.CONDINST.MASK_BRANCH = CN()
_C.MODEL.CONDINST.MASK_BRANCH.IN_FEATURES = [
    "p3",
    "p4",
    "p5",
]  # FPN levels fused by the mask branch
_C.MODEL.CONDINST.MASK_BRANCH.CHANNELS = 128  # channels of the mask branch's convs
_C.MODEL.CONDINST.MASK_BRANCH.NUM_CONVS = 4  # conv3x3+norm+ReLU layers after the fusion
_C.MODEL.CONDINST.MASK_BRANCH.OUT_CHANNELS = 8  # mask-feature channels fed to the dynamic head
_C.MODEL.CONDINST.MASK_BRANCH.NORM = "BN"  # "BN", "GN" or "" in the mask branch

# ------------------------------------------------------------------------------------------------
# Input
# ------------------------------------------------------------------------------------------------
_C.INPUT = CN()
_C.INPUT.MIN_SIZE_TRAIN = (
    480,
    512,
    544,
    576,
    608,
    640,
    672,
    704,
    736,
    768,
    800,
)  # short-side choices
_C.INPUT.MIN_SIZE_TRAIN_SAMPLING = "choice"  # "choice" of the list or "range" between its two ends
_C.INPUT.MAX_SIZE_TRAIN = 1333  # cap on the long side in training
_C.INPUT.MIN_SIZE_TEST = 800  # short side at test time (0 disables resizing)
_C.INPUT.MAX_SIZE_TEST = 1333  # cap on the long side at test time
_C.INPUT.RANDOM_FLIP = "horizontal"  # "horizontal" or "none"
_C.INPUT.SIZE_DIVISIBILITY = 32  # batches are padded to a multiple of this

# ------------------------------------------------------------------------------------------------
# Datasets and loading
# ------------------------------------------------------------------------------------------------
_C.DATASETS = CN()
_C.DATASETS.ROOT = ""  # dataset root; "" means $IDIP_DATASETS, else ./datasets
_C.DATASETS.TRAIN = ("coco_2017_train",)  # registered dataset names used for training
_C.DATASETS.TEST = ("coco_2017_val",)  # registered dataset names used for evaluation
# Extra COCO-format datasets, declared without Python: a list of
# {NAME: str, JSON: path, IMAGES: folder}; relative paths are taken from DATASETS.ROOT.
_C.DATASETS.CUSTOM = []

_C.DATALOADER = CN()
_C.DATALOADER.NUM_WORKERS = 4  # loader processes per rank
_C.DATALOADER.ASPECT_RATIO_GROUPING = True  # batch landscape and portrait images separately
_C.DATALOADER.FILTER_EMPTY_ANNOTATIONS = True  # drop training images with no usable instance
_C.DATALOADER.MAX_BAD_IMAGE_FRACTION = (
    0.01  # abort training when more images than this fail to load
)

# ------------------------------------------------------------------------------------------------
# Solver
# ------------------------------------------------------------------------------------------------
_C.SOLVER = CN()
_C.SOLVER.OPTIMIZER = "ADAMW"  # "ADAMW" or "SGD"
_C.SOLVER.BASE_LR = 2.5e-5  # learning rate for a total batch of IMS_PER_BATCH
_C.SOLVER.MOMENTUM = 0.9  # SGD momentum
_C.SOLVER.NESTEROV = False  # SGD Nesterov momentum
_C.SOLVER.BETAS = (0.9, 0.999)  # AdamW betas
_C.SOLVER.WEIGHT_DECAY = 1e-4  # weight decay for weights
_C.SOLVER.WEIGHT_DECAY_NORM = 0.0  # weight decay for normalisation parameters
_C.SOLVER.WEIGHT_DECAY_BIAS = None  # weight decay for biases (None: same as WEIGHT_DECAY)
_C.SOLVER.BACKBONE_MULTIPLIER = 1.0  # learning-rate factor of the backbone's parameters
_C.SOLVER.IMS_PER_BATCH = 16  # total images per iteration over all ranks (and accumulation steps)
_C.SOLVER.GRAD_ACCUM_STEPS = 0  # 0: chosen so that IMS_PER_BATCH fits; else forward passes per step
_C.SOLVER.MAX_ITER = 90000  # training iterations
_C.SOLVER.STEPS = (60000, 80000)  # iterations at which the learning rate is multiplied by GAMMA
_C.SOLVER.GAMMA = 0.1  # learning-rate decay factor at each step
_C.SOLVER.WARMUP_FACTOR = 0.01  # learning-rate factor at iteration 0 of the linear warmup
_C.SOLVER.WARMUP_ITERS = 1000  # length of the linear warmup
_C.SOLVER.WARMUP_METHOD = "linear"  # "linear" or "constant"
_C.SOLVER.CHECKPOINT_PERIOD = 5000  # iterations between checkpoints
_C.SOLVER.AMP = CN()
_C.SOLVER.AMP.ENABLED = False  # automatic mixed precision
_C.SOLVER.AMP.DTYPE = "bfloat16"  # "bfloat16" or "float16" (float16 uses a gradient scaler)
_C.SOLVER.CLIP_GRADIENTS = CN()
_C.SOLVER.CLIP_GRADIENTS.ENABLED = True  # clip gradients before each step
_C.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = "full_model"  # "full_model" (norm over all) or "value"
_C.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = 1.0  # max norm (full_model) or max abs value (value)
_C.SOLVER.CLIP_GRADIENTS.NORM_TYPE = 2.0  # p of the p-norm for full_model clipping

# ------------------------------------------------------------------------------------------------
# Test
# ------------------------------------------------------------------------------------------------
_C.TEST = CN()
_C.TEST.EVAL_PERIOD = 0  # iterations between evaluations during training (0: only at the end)
_C.TEST.IMS_PER_BATCH = 1  # images per inference batch per rank
_C.TEST.SEED = 0  # seed of the random parts of inference (IDIP's initial boxes), for repeatable AP
_C.TEST.DETECTIONS_PER_IMAGE = 100  # kept detections per image for evaluation

# ------------------------------------------------------------------------------------------------
# Engine: distributed data parallel and checkpoints (idip.engine)
# ------------------------------------------------------------------------------------------------
_C.DDP = CN()
_C.DDP.FIND_UNUSED_PARAMETERS = (
    False  # DDP find_unused_parameters (slower; for models with unused branches)
)
# Convert every BatchNorm of the model to SyncBatchNorm (CUDA only); a norm "SyncBN" syncs its own.
_C.DDP.SYNC_BN = False
_C.DDP.BROADCAST_BUFFERS = False  # DDP broadcast_buffers (rank 0's buffers sent every step)
_C.SOLVER.CHECKPOINT_MAX_KEEP = (
    0  # periodic checkpoints kept on disk (0: all); model_final.pth is always kept
)

# ------------------------------------------------------------------------------------------------
# Misc
# ------------------------------------------------------------------------------------------------
_C.OUTPUT_DIR = "./output"  # checkpoints, logs, metrics.json, tensorboard and config.yaml
_C.SEED = -1  # global seed; < 0 picks one at random (and logs it)
_C.CUDNN_BENCHMARK = False  # torch.backends.cudnn.benchmark
_C.DETERMINISTIC = False  # torch.use_deterministic_algorithms (slower; for exact resumes)
_C.LOG_PERIOD = 20  # iterations between log lines


def get_cfg() -> CN:
    """Returns a fresh, mutable copy of the default config."""
    return _C.clone()
