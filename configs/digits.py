"""The built-in default: WPCE on scikit-learn's handwritten digits, trains on 2 CPU cores in a few minutes.

    python -m wpce_jax.main --config=configs/digits.py --workdir=/tmp/digits
    python -m wpce_jax.main --config=configs/digits.py:clip --workdir=/tmp/digits_clip   # CLIP baseline

Evaluated on the held-out 20% of the digits: zero-shot ("zeroshot/digits/top1"), image<->text retrieval by digit
("retrieval/digits/i2t_recall@1", ...), a linear probe ("linear_probe/digits/top1") and image->image retrieval by
digit ("image_retrieval/digits/map@r").
"""
from configs import common


def get_config(arg: str = "wpce"):
    [similarity] = common.parse_arg(__file__, arg, similarity=common.SIMILARITIES)
    c = common.base()
    c.model.similarity = similarity
    c.total_steps = 600
    c.batch_size = 128
    c.log_every_steps = 25
    c.eval_every_steps = 200
    c.checkpoint_every_steps = 200
    c.data.kind = "digits"
    c.data.image_size = 32            # the 8x8 scans are stored upscaled to 32x32
    c.data.crop_scale = (0.7, 1.0)    # digits fill the frame: stronger crops cut strokes away
    c.model.embed_dim = 64
    c.model.image.variant = "custom"
    c.model.image.patch_size = 8      # 16 patches + class token = 17 points per image
    c.model.image.width = 128
    c.model.image.depth = 3
    c.model.image.heads = 4
    c.model.image.mlp_dim = 256
    c.model.text.width = 128
    c.model.text.depth = 2
    c.model.text.heads = 4
    c.model.text.mlp_dim = 256
    c.model.text.context_length = 24  # the longest caption is 23 SentencePiece tokens with start and end
    c.wpce.num_features = 256
    c.optim.lr = 1e-3
    c.optim.warmup_steps = 50
    c.optim.weight_decay = 0.1
    c.eval.batch_size = 128
    c.eval.zeroshot = "digits"
    c.eval.linear_probe = "digits"
    c.eval.retrieval = "digits"
    c.eval.image_retrieval = "digits"
    return c
