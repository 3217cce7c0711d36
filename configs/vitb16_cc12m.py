"""The paper's setting: ViT-B/16 WPCE on CC12M (Uesaka et al., ICLR 2025); ":clip" gives the CLIP baseline.

    python -m wpce_jax.main --config=configs/vitb16_cc12m.py --workdir=/mnt/runs/wpce_b16 \
        --config.data.train_dir=/data/cc12m_arrayrecord \
        --config.data.tokenizer_path=/data/bpe_simple_vocab_16e6.txt.gz \
        --config.eval.tfds_data_dir=/data/tensorflow_datasets --config.eval.aircraft_dir=/data/fgvc_aircraft \
        --config.eval.flickr30k_dir=/data/flickr30k

Convert CC12M first with `python -m wpce_jax.data.convert`. 35 epochs of the converted set at global batch 4096
with one warm-up epoch: the steps are counted from the converted manifest's "num_examples" at start-up. The workdir
and the data may be local paths or gs:// URIs (every host must see the same workdir).
"""
from configs import common


def get_config(arg: str = "wpce"):
    """arg: "wpce" or "clip"."""
    [similarity] = common.parse_arg(__file__, arg, similarity=common.SIMILARITIES)
    c = common.base()
    c.model.similarity = similarity
    c.require_accelerator = True      # a CPU-only JAX install is an error here, not a silently slow run
    c.data.kind = "arrayrecord"
    c.data.tokenizer = "clip_bpe"
    c.data.worker_count = 16
    c.data.image_size = 224
    c.data.crop_scale = (0.5, 1.0)
    c.batch_size = 4096               # 512 per device on 8 devices
    c.total_steps = None              # counted from the data:
    c.epochs = 35
    c.warmup_epochs = 1
    c.log_every_steps = 100
    c.eval_every_steps = 5000
    c.checkpoint_every_steps = 2000
    c.model.dtype = "bfloat16"        # mixed precision
    c.model.image.variant = "B/16"
    c.model.embed_dim = 512
    c.model.text.activation = "quick_gelu"  # as the reference release's text tower (OpenAI CLIP's)
    c.model.weight_bias = False       # as the reference release's point-weight projection
    c.model.scan_blocks = True        # one compiled block per tower, whatever the depth
    c.eval.batch_size = 1024
    # The paper's evaluation: the reference release's 13 zero-shot sets and their linear probes (TFDS sets from
    # --config.eval.tfds_data_dir, FGVC-Aircraft from --config.eval.aircraft_dir), COCO and Flickr30k retrieval.
    # A set whose data is missing is skipped with one warning line.
    paper_sets = "cifar10,cifar100,imagenet,stl10,food101,cars,eurosat,caltech101,pets,flowers,dtd,aircraft,sun397"
    c.eval.zeroshot = paper_sets
    c.eval.linear_probe = paper_sets
    c.eval.retrieval = "coco,flickr30k"
    c.eval.linear_probe_in_training = False  # 13 probes (ImageNet: 1.28M images) are for python -m wpce_jax.evaluate
    return c
