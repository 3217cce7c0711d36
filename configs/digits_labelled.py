"""Metric learning of the image tower alone on the digits with their class labels: triplet or margin contrastive.

    python -m wpce_jax.main --config=configs/digits_labelled.py --workdir=/tmp/digits_triplet          # wpce, triplet
    python -m wpce_jax.main --config=configs/digits_labelled.py:clip,margin_contrastive --workdir=/tmp/x

The argument is "wpce" | "clip" (the similarity), optionally followed by ",triplet" (default, semihard mining) or
",margin_contrastive". The loss runs over the compared vectors (WPCE feature maps with the step's RFF draw, or unit
vectors for "clip"). The text tower is never run, so the evaluation is the linear probe alone.
"""
from configs import common, digits

MARGINS = {"triplet": 0.2, "margin_contrastive": 1.0}


def get_config(arg: str = "wpce"):
    similarity, metric_loss = common.parse_arg(__file__, arg, similarity=common.SIMILARITIES,
                                               metric_loss=tuple(MARGINS))
    c = digits.get_config(similarity)
    c.mode = "labelled"
    c.metric_loss = metric_loss
    c.margin = MARGINS[metric_loss]   # FaceNet's 0.2 on squared distances; 1.0 on distances (unit vectors: <= 2)
    c.mining = "semihard"             # triplet only: "semihard" | "hard" | "all"
    c.eval.zeroshot = ""
    c.eval.retrieval = ""
    c.eval.linear_probe = "digits"
    c.eval.image_retrieval_by = "distance"  # the losses shape Euclidean distances; for WPCE maps that is not the dot product
    return c
