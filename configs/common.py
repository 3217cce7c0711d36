"""Fields shared by every experiment; an experiment file starts from `base()` and sets what differs."""
import os

import ml_collections
from ml_collections.config_dict import placeholder


def base() -> ml_collections.ConfigDict:
    """Every optional field is a typed placeholder, so `--config.KEY=VALUE` can set it."""
    c = ml_collections.ConfigDict()
    c.seed = 0                        # root of every random draw: init, data order, crops, RFF frequencies
    c.require_accelerator = False     # fail at start-up when JAX finds no TPU/GPU (set on configs for real runs)
    c.total_steps = 1000              # train steps in the run (unless epochs is set)
    c.epochs = placeholder(float)     # set: the run's length in passes over the training set (steps counted from
    c.warmup_epochs = placeholder(float)  # its manifest's num_examples), and the warm-up's (replaces optim.warmup_steps)
    c.init_from = placeholder(str)    # DIR[:STEP]: a new run starts from that workdir's parameters (latest step by
                                      # default; not the optimiser state); ignored once the run has a checkpoint
    c.require_init_from = False       # True: a fine-tuning config; a run without init_from stops with a ConfigError
    c.batch_size = 256                # global batch (all devices of all processes)
    c.log_every_steps = 50            # metrics.jsonl / TensorBoard / console every this many steps
    c.eval_every_steps = 500          # evaluation (eval.*) every this many steps (and at the end)
    c.checkpoint_every_steps = 500    # Orbax checkpoint every this many steps (and at the end, and on SIGTERM)
    c.profile_steps = ()              # (first, last): write a jax.profiler trace of these steps to DIR/profile
    c.keep_checkpoints = 3            # checkpoints kept on disk (the newest)
    c.async_checkpoints = True        # write checkpoints in the background while training goes on
    c.logit_scale_min = 1.0           # the logit scale is clipped to [min, max] after every update
    c.logit_scale_max = 100.0
    c.objective = "infonce"           # image-text loss: "infonce" | "sigmoid" (SigLIP, learned bias) | "nce"
    c.mode = "image_text"             # "image_text" | "two_view" | "labelled" (image tower only; see configs/digits_two_view.py)
                                      # | "ranking" (graded relevance from label tuples; see configs/digit_pairs.py)
    c.ranking = ml_collections.ConfigDict()
    c.ranking.kind = "softmax"        # ranking: "softmax" | "pairwise_logistic" | "approx_ndcg" | "pointwise_sigmoid" | "infonce"
    c.ranking.direction = "t2i"       # ranking: "t2i" (captions query images) | "i2t" | "both" (the mean)

    c.data = ml_collections.ConfigDict()
    c.data.kind = "arrayrecord"       # "digits" or "digit_pairs" (built-in) or "arrayrecord" (a converted dataset, e.g. CC12M)
    c.data.relevance = "exact"        # grade of two label tuples (relevance.py): "exact" | "positional" | "hierarchical"
    c.data.train_dir = placeholder(str)           # arrayrecord: converted training data (holds manifest.json)
    c.data.cache_dir = placeholder(str)           # digits: where the built-in dataset is written once (default ~/.cache/wpce_jax)
    c.data.tokenizer = "clip_bpe"     # "clip_bpe" or "sentencepiece" (digits always uses its own SentencePiece)
    c.data.tokenizer_path = placeholder(str)      # bpe_simple_vocab_16e6.txt.gz or a SentencePiece .model
    c.data.image_size = 224           # square input side after cropping
    c.data.crop_scale = (0.5, 1.0)    # RandomResizedCrop area range for training
    c.data.worker_count = 0           # grain worker processes decoding images (0: threads in the main process)
    c.data.samples_per_class = 0      # 0: uniform shuffle; m >= 2: batches of whole groups of m images of a class
    c.data.max_skipped_fraction = 0.01  # stop when more of the examples seen had to be replaced (unreadable records)

    c.model = ml_collections.ConfigDict()
    c.model.similarity = "wpce"       # "wpce" (point clouds, kernel similarity) or "clip" (one point, cosine)
    c.model.embed_dim = 512           # point dimension d
    c.model.ln_eps = 1e-6             # LayerNorm epsilon
    c.model.dtype = "float32"         # compute dtype ("bfloat16" for mixed precision); parameters stay float32
    c.model.remat = "none"            # backward-pass memory: "none" | "full" (recompute blocks) | "save_dots"
    c.model.scan_blocks = False       # transformer blocks under nn.scan (compile time independent of depth)
    c.model.attention = "auto"        # "auto" (cuDNN's fused kernel on NVIDIA GPUs in bf16, else Flax's) | "xla" | "cudnn"
    c.model.weight_alpha = 100.0      # point weights are alpha * tanh(x / alpha)
    c.model.weight_bias = True        # the point-weight projection has a bias (the reference release's has none)
    c.model.weight_activation = "tanh"  # "tanh": alpha * tanh(x / alpha); "sigmoid": alpha * sigmoid(x / alpha)
    c.model.image = ml_collections.ConfigDict()
    c.model.image.variant = "B/16"    # "Ti"/"S"/"B"/"L" with "/patch", or "custom" with the fields below
    c.model.image.patch_size = placeholder(int)   # patch side (custom, or a size name without "/patch")
    c.model.image.width = placeholder(int)        # custom only: token width
    c.model.image.depth = placeholder(int)        # custom only: blocks
    c.model.image.heads = placeholder(int)        # custom only: attention heads
    c.model.image.mlp_dim = placeholder(int)      # custom only: MLP hidden size
    c.model.image.ln_eps = placeholder(float)     # the ViT's LayerNorm epsilon (default model.ln_eps)
    c.model.image.ln_pre = False      # a LayerNorm before the blocks (OpenAI CLIP's ViT)
    c.model.image.patch_bias = True   # the patch embedding has a bias (OpenAI CLIP's has none)
    c.model.image.activation = "gelu"  # MLP activation: "gelu" (exact) or "quick_gelu" (OpenAI CLIP's ViT)
    c.model.image.pixel_stats = "imagenet"  # uint8 pixel mean/std: "imagenet" or "clip" (OpenAI CLIP's weights)
    c.model.text = ml_collections.ConfigDict()
    c.model.text.width = 512          # token width
    c.model.text.depth = 12           # blocks
    c.model.text.heads = 8            # attention heads
    c.model.text.mlp_dim = 2048       # MLP hidden size
    c.model.text.context_length = 77  # tokens per caption, start and end tokens included
    c.model.text.activation = "gelu"  # MLP activation: "gelu" (exact) or "quick_gelu" (the reference's text tower)
    c.model.text.ln_eps = placeholder(float)      # the text tower's LayerNorm epsilon (default model.ln_eps)
    c.model.text.pool = "first_eot"   # the "clip" text position: "first_eot" or "argmax" (largest id, OpenAI's rule)
    c.model.text.null_rows = placeholder(int)     # sequel padding rows (default context_length; release: L - 1; 0: none)
    c.model.text.sequel_rule = "after_end"  # padding positions: "after_end" (after the first eot) or "zero_id" (release)
    c.model.text.vocab_size = placeholder(int)    # filled in from the tokenizer at start-up
    c.model.text.eot_id = placeholder(int)        # filled in from the tokenizer at start-up

    c.wpce = ml_collections.ConfigDict()
    c.wpce.kernel = "gaussian"        # shift-invariant kernel: gaussian, imq, cauchy, laplacian
    c.wpce.scale = 0.5                # sigma (gaussian, laplacian) or c (imq, cauchy)
    c.wpce.num_features = 1024        # random Fourier features D
    c.wpce.a_lin = 0.667              # weight of the linear kernel
    c.wpce.a_rff = 0.333              # weight of the shift-invariant kernel

    c.optim = ml_collections.ConfigDict()
    c.optim.lr = 5e-4                 # peak learning rate
    c.optim.init_lr = 1e-6            # learning rate at step 0 (linear warm-up from here)
    c.optim.end_lr = 1e-5             # learning rate at the end of the cosine decay
    c.optim.warmup_steps = 100        # warm-up length in optimizer updates
    c.optim.schedule_steps = placeholder(int)  # the schedule's length, warm-up included (end_lr from there on):
                                      # total_steps unless set; a resumed run keeps its checkpoint's, and its warm-up
    c.optim.b1 = 0.9                  # AdamW beta1
    c.optim.b2 = 0.98                 # AdamW beta2
    c.optim.eps = 1e-8                # AdamW epsilon
    c.optim.weight_decay = 0.5        # decoupled weight decay, matrices only
    c.optim.grad_clip_norm = 0.0      # clip gradients to this global norm (0: off)
    c.optim.frozen = placeholder(str)  # regex over '/'-joined parameter paths (or their ancestors'), e.g. 'image_.*'
                                      # (LiT): those get no update and no optimiser state
    c.optim.accum_steps = 1           # k micro-batches per step, to save memory: the towers run on batch_size / k at
                                      # a time; the loss is still over all of batch_size (GradCache); 1 update a step

    c.mesh = ml_collections.ConfigDict()
    c.mesh.fsdp = 1                   # devices that split the parameters and optimiser state (FSDP); must divide
                                      # the device count; the batch is always split over every device

    c.eval = ml_collections.ConfigDict()
    c.eval.batch_size = 256           # global evaluation batch
    # Datasets per evaluation: comma-separated specs, NAME (registry) or NAME=KIND:LOCATION with KIND tfds,
    # folder, arrayrecord, karpathy (see wpce_jax/evaluate/registry.py); "" evaluates nothing.
    c.eval.zeroshot = ""              # zero-shot classification sets
    c.eval.linear_probe = ""          # linear-probe sets (need a train split)
    c.eval.linear_probe_in_training = True  # probe at the trainer's evaluations too (else only the evaluate command)
    c.eval.retrieval = ""             # image-caption retrieval sets
    c.eval.image_retrieval = ""       # image->image retrieval by class (leave-one-out over the test images)
    c.eval.image_retrieval_by = "similarity"  # rank by "similarity" or by "distance" (for distance-trained models)
    for kind in ("zeroshot", "linear_probe", "retrieval", "image_retrieval"):  # evaluate.evaluator.KINDS
        c.eval[f"{kind}_every_steps"] = placeholder(int)  # run it every this many steps (default eval_every_steps)
    c.eval.tfds_data_dir = placeholder(str)   # TFDS data_dir holding the prepared (array_record) eval datasets
    c.eval.aircraft_dir = placeholder(str)    # FGVC-Aircraft class folders: DIR/{train,test}/<variant>/*.jpg
    c.eval.flickr30k_dir = placeholder(str)   # DIR/dataset_flickr30k.json (Karpathy) and the images
    c.eval.rff_draws = 1              # evaluation RFF draws averaged (the first is the checkpoint's own)
    c.eval.probe_features = "pooled"  # linear probe on "pooled" tokens or the "compared" vector x sqrt(scale)
    c.eval.cache_features = True      # python -m wpce_jax.evaluate keeps image features under DIR/eval/features
    return c


SIMILARITIES = ("wpce", "clip")  # "wpce" (the method) or "clip" (the baseline on the same towers)


def parse_arg(config_file: str, arg: str, **choices) -> tuple:
    """The values a config's ":ARG" picks, in the order of `choices`.

    ARG is comma-separated parts (big_vision's `bvcc.parse_arg` idea, with fixed choices): each part is one of the
    allowed values of one choice, the choices in their declared order, each optional one free to be left out
    ("cub,margin_contrastive" skips the similarity). choices: name -> allowed values, the first being the default;
    a first value of None makes the choice required. Anything else is a ValueError of one line that names the config
    file and every allowed value."""
    names = list(choices)
    parts = [p.strip() for p in arg.split(",") if p.strip()]
    picked, next_choice = {}, 0
    for part in parts:
        # The next declared choice that allows this part; an optional one before it keeps its default.
        match = next((i for i in range(next_choice, len(names)) if part in choices[names[i]]), None)
        if match is None:
            break
        picked[names[match]], next_choice = part, match + 1
    else:
        if all(name in picked or choices[name][0] is not None for name in names):
            return tuple(picked.get(name, choices[name][0]) for name in names)
    raise ValueError(f"configs/{os.path.basename(config_file)} takes {_describe(choices)}; got {arg!r}")


def _describe(choices: dict) -> str:
    """e.g. "':lit' or ':full' (default ':lit'), then optionally ',wpce' or ',clip' (default ',wpce')"."""
    phrases = []
    for i, allowed in enumerate(choices.values()):
        sep = ":" if i == 0 else ","
        values = [f"'{sep}{v}'" for v in allowed if v is not None]
        listed = ", ".join(values[:-1]) + " or " + values[-1] if len(values) > 1 else values[0]
        if allowed[0] is not None:
            listed += f" (default '{sep}{allowed[0]}')"
        phrases.append(listed if i == 0 else f"then {'' if allowed[0] is None else 'optionally '}{listed}")
    return ", ".join(phrases)
