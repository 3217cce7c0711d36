"""Fine-tune an imported CLIP ViT-B/16 on a converted caption set: ":lit" locks the image tower (LiT), ":full" trains
both; ",wpce" (default) or ",clip" picks the similarity.

    python -m wpce_jax.main --config=configs/finetune_clip.py:lit,wpce --workdir=/mnt/runs/lit_wpce \
        --config.init_from=/mnt/runs/openai_b16 \
        --config.data.train_dir=/data/cc3m_arrayrecord \
        --config.data.tokenizer_path=/data/bpe_simple_vocab_16e6.txt.gz

init_from is the workdir `python -m wpce_jax.import_checkpoint --format=open_clip` wrote (or any run with these
model fields: a parameter of another shape stops the run before it trains, naming it): ",clip" continues the
source's own similarity from a plain import; ",wpce" needs an import with --as_wpce (which adds the padding tokens'
embedding rows and starts the point-weight projections as the paper's release does). The model fields below are
OpenAI CLIP ViT-B/16's, as the importer records them; for another source, set --config.model.* to the imported
workdir's config.json.
"""
from configs import common


def get_config(arg: str = "lit,wpce"):
    """arg: "lit" or "full", then optionally ",wpce" or ",clip"."""
    mode, similarity = common.parse_arg(__file__, arg, mode=("lit", "full"), similarity=common.SIMILARITIES)
    c = common.base()
    c.model.similarity = similarity
    c.require_init_from = True        # a fine-tuning config: init_from must name the source workdir
    c.require_accelerator = True      # a CPU-only JAX install is an error here, not a silently slow run
    c.data.kind = "arrayrecord"       # a set converted by `python -m wpce_jax.data.convert` (data.train_dir)
    c.data.tokenizer = "clip_bpe"     # CLIP's own BPE, so the imported token embedding keeps its meaning
    c.data.worker_count = 16          # decoding processes per host
    c.data.image_size = 224           # CLIP ViT-B/16's input side
    c.data.crop_scale = (0.8, 1.0)    # milder crops than from scratch: the towers already know the images
    c.batch_size = 1024               # global contrastive batch
    c.total_steps = None              # counted from the data:
    c.epochs = 5                      # passes over the converted set
    c.warmup_epochs = 0.2             # warm-up length, in epochs
    c.log_every_steps = 100           # metrics every this many steps
    c.eval_every_steps = 2000         # evaluations (eval.*) every this many steps
    c.checkpoint_every_steps = 1000   # checkpoints every this many steps
    c.model.dtype = "bfloat16"        # mixed precision (parameters stay float32)
    c.model.ln_eps = 1e-5             # OpenAI CLIP's LayerNorm epsilon
    c.model.embed_dim = 512           # CLIP ViT-B/16's joint dimension
    c.model.image.variant = "B/16"    # 12 blocks of width 768, patch 16
    c.model.image.ln_pre = True       # OpenAI CLIP's ViT normalises the tokens before the blocks
    c.model.image.patch_bias = False  # ... and its patch convolution has no bias
    c.model.image.activation = "quick_gelu"  # OpenAI CLIP's MLPs, both towers
    c.model.image.pixel_stats = "clip"  # the pixel mean/std OpenAI CLIP was trained with
    c.model.text.activation = "quick_gelu"  # OpenAI CLIP's text MLP
    c.model.text.pool = "argmax"      # the end-of-text position is the largest id (OpenAI CLIP's pooling)
    c.model.text.width = 512          # CLIP ViT-B/16's text tower: 12 blocks of width 512, 8 heads
    c.model.text.context_length = 77  # CLIP's context, start and end tokens included
    c.model.weight_bias = False       # the point-weight projections (new for ",wpce") have no bias, as the paper's
    c.model.scan_blocks = False       # the importer writes one parameter set per block (a scanned run cannot start from it)
    c.optim.frozen = "image_.*" if mode == "lit" else None  # LiT: the image encoder and its head are locked
    c.optim.lr = 1e-4 if mode == "lit" else 1e-5  # peak: a locked image tower lets the text side move faster
    c.optim.end_lr = 0.0              # cosine to zero
    c.optim.weight_decay = 0.1        # decoupled, matrices only (never a frozen parameter)
    c.optim.grad_clip_norm = 1.0      # a pre-trained model's first steps on new data can spike
    c.eval.batch_size = 1024          # global evaluation batch
    c.eval.zeroshot = "cifar10,cifar100,imagenet"  # needs --config.eval.tfds_data_dir; a missing set is skipped
    c.eval.linear_probe = ""          # a locked tower's probe does not change: use python -m wpce_jax.evaluate
    c.eval.retrieval = "coco"         # image-caption retrieval
    # CLIP embeds padding as its own token id; the WPCE import (--as_wpce) adds the padding tokens' rows.
    c.model.text.null_rows = 0 if c.model.similarity == "clip" else None
    return c
