"""Compositional captions on pairs of real digit scans (experiments/compositional.py builds the data).

Each image holds two of scikit-learn's handwritten digits side by side; its caption says which is on the left
("a three left of a seven", "seven right of three", ...). The towers are those of configs/digits.py; the argument
picks the similarity and its width:

    :wpce        WPCE, points of dimension d = 64, D = 256 random Fourier features (compared vectors of d + D)
    :clip        CLIP with embed_dim d = 64 (equal compute: the same towers, one point instead of a cloud)
    :clip_wide   CLIP with embed_dim d + D = 320 (equal similarity width: compared vectors as wide as WPCE's)

data.train_dir and data.tokenizer_path must name the records and the SentencePiece model the experiment wrote:

    python -m wpce_jax.main --config=configs/compositional.py:wpce --workdir=/tmp/comp_wpce \
        --config.data.train_dir=DATA/train --config.data.tokenizer_path=DATA/spm.model
"""
from configs import common, digits


def get_config(arg: str = "wpce"):
    [similarity] = common.parse_arg(__file__, arg, similarity=("wpce", "clip", "clip_wide"))
    c = digits.get_config("wpce" if similarity == "wpce" else "clip")  # the digits towers, batch and optimiser
    c.total_steps = 1000
    c.log_every_steps = 50
    c.eval_every_steps = 100000       # evaluated by the experiment from the final checkpoint
    c.checkpoint_every_steps = 100000  # (a checkpoint is always written at the last step)
    for task in ("zeroshot", "linear_probe", "retrieval", "image_retrieval"):
        c.eval[task] = ""
    c.data.kind = "arrayrecord"
    c.data.tokenizer = "sentencepiece"
    c.data.crop_scale = (0.85, 1.0)   # milder than digits: a strong crop would cut off part of a side digit
    c.model.text.context_length = 16  # the longest caption: 9 words, 11 tokens with start and end
    if similarity == "clip_wide":
        c.model.embed_dim += c.wpce.num_features  # equal similarity width: compared vectors as wide as WPCE's
    return c
