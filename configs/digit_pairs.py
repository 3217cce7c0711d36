"""Learning to rank on the built-in digit pairs: graded relevance from (left, right) label tuples.

Each image holds two of scikit-learn's handwritten digits side by side; its caption names them in order ("a three
then a seven", "a seven right of a three"); its label tuple is (left, right). The relevance of an item to a query is
positional: the number of sides on which their digits agree (0, 1 or 2). 20 of the 90 ordered pairs are held out of
training and their test images are made of the held-out scans (wpce_jax/data/digit_pairs.py, built once into
data.cache_dir). Evaluation: image <-> text retrieval on the held-out pairs, graded NDCG@10 both ways
(retrieval/digit_pairs/{i2t,t2i}_ndcg@10) beside the binary recall@K and mAP (relevant: the same pair).

    python -m wpce_jax.main --config=configs/digit_pairs.py:wpce,approx_ndcg --workdir=/tmp/pairs_wpce_ndcg

The argument is "wpce" | "clip" (the similarity; the towers of configs/digits.py), optionally followed by
",softmax" (default) | ",pairwise_logistic" | ",approx_ndcg" | ",pointwise_sigmoid" | ",infonce" (the binary
baseline: symmetric InfoNCE, the softmax with relevance 1 on the partner only). The loss is taken both ways (the mean
of text->image and image->text) over the compared vectors with the model's logit scale.
"""
from configs import common, digits

KINDS = ("softmax", "pairwise_logistic", "approx_ndcg", "pointwise_sigmoid", "infonce")


def get_config(arg: str = "wpce"):
    similarity, kind = common.parse_arg(__file__, arg, similarity=common.SIMILARITIES, kind=KINDS)
    c = digits.get_config(similarity)
    c.mode = "ranking"
    c.ranking.kind = kind
    c.ranking.direction = "both"
    c.data.kind = "digit_pairs"
    c.data.relevance = "positional"
    c.data.crop_scale = (0.85, 1.0)   # milder than digits: a strong crop would cut off part of a side digit
    c.model.text.context_length = 16  # the longest caption: 9 words, 11 tokens with start and end
    c.total_steps = 1000
    c.eval_every_steps = 500
    c.checkpoint_every_steps = 500
    c.eval.zeroshot = ""
    c.eval.linear_probe = ""
    c.eval.image_retrieval = ""
    c.eval.retrieval = "digit_pairs"
    return c
