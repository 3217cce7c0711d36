"""CIFAR-100 with its class hierarchy: (coarse, fine) label tuples, hierarchical relevance, the image tower alone.

An image's label tuple is (coarse, fine): its superclass (20) and class (100). Under hierarchical relevance
(relevance.py) another image of the same class has grade 2, one of another class in the same superclass grade 1,
any other 0. Prepare the data once (TFDS's cifar100 has the features `coarse_label` and `label`):

    tfds build cifar100 --data_dir=$TFDS --file_format=array_record
    python -m wpce_jax.data.tfds_to_records --name cifar100 --data_dir $TFDS --output /data/c100h \\
        --labels_features coarse_label,label
    python -m wpce_jax.data.train_tokenizer --data /data/c100h/train --output /data/c100h/spm --vocab_size 300

tfds_to_records pools train and test and cuts by fine class (the zero-shot metric-learning protocol): fine classes
0-49 train, 50-99 test, so the test classes are unseen while their superclasses are mostly seen (every superclass
has 5 fine classes; CIFAR-100's fine indices are alphabetical, so a superclass's classes fall on both sides). The
trainer builds the text tower although these modes never run it, so it needs a tokenizer (any small one). Then

    python -m wpce_jax.main --config=configs/cifar100_hierarchy.py:ranking --workdir=/tmp/c100h \\
        --config.data.train_dir=/data/c100h/train --config.data.tokenizer_path=/data/c100h/spm.model \\
        --config.eval.image_retrieval=cifar100h=arrayrecord:/data/c100h/test

The argument is "ranking" (default) or "labelled", optionally followed by ",wpce" (default) or ",clip" and, for
ranking, by ",softmax" (default) | ",pairwise_logistic" | ",approx_ndcg" | ",pointwise_sigmoid" | ",infonce":
- ranking: mode "image_ranking": two augmented views of each image (SimCLR's, as in configs/digits_two_view.py);
  each view's compared vector ranks the other view's batch with hierarchical grades, both ways ("infonce": the
  partner view only, i.e. NT-Xent at the initial logit scale). The logit scale is not trained in image-only modes.
- labelled: mode "labelled", triplet loss (semihard) on the fine class ("label"), as configs/dml.py.
Evaluation: image_retrieval/NAME/{precision@1, map@r, ...} by fine class and the graded image_retrieval/NAME/ndcg@10
by the (coarse, fine) tuples of the test records.
Model: the towers of configs/digits.py at CIFAR's 32 px (patch 8: 16 patches + the class token).
"""
import ml_collections
from ml_collections.config_dict import placeholder

from configs import common, digits

KINDS = ("softmax", "pairwise_logistic", "approx_ndcg", "pointwise_sigmoid", "infonce")
TRAIN_IMAGES = 30000  # fine classes 0-49 of train and test pooled: 50 x 600


def get_config(arg: str = "ranking"):
    """arg: "ranking" (then optionally ",wpce" or ",clip", then a kind) or "labelled" (then ",wpce" or ",clip")."""
    mode, similarity, kind = common.parse_arg(__file__, arg, mode=("ranking", "labelled"),
                                              similarity=common.SIMILARITIES, kind=KINDS)
    if mode == "labelled" and arg.split(",")[-1].strip() in KINDS:
        raise ValueError(f"configs/cifar100_hierarchy.py: a ranking kind goes with ':ranking', not ':labelled' "
                         f"(the triplet loss); got {arg!r}")
    c = digits.get_config(similarity)
    c.data.kind = "arrayrecord"
    c.data.train_dir = placeholder(str)        # required: OUT/train of tfds_to_records --labels_features
    c.data.tokenizer = "sentencepiece"
    c.data.tokenizer_path = placeholder(str)   # required: a .model from wpce_jax.data.train_tokenizer
    c.data.image_size = 32
    c.data.crop_scale = (0.2, 1.0)             # SimCLR's CIFAR crops (its 0.08 cuts 32 px images to a few pixels)
    c.data.relevance = "hierarchical"
    c.model.text.context_length = 16           # "a photo of a <class name>"
    c.batch_size = 256
    c.total_steps = 20 * (TRAIN_IMAGES // c.batch_size)  # 20 epochs
    c.eval_every_steps = c.checkpoint_every_steps = 5 * (TRAIN_IMAGES // c.batch_size)
    c.log_every_steps = 50
    c.optim.warmup_steps = TRAIN_IMAGES // c.batch_size
    if mode == "ranking":
        c.mode = "image_ranking"
        c.ranking.kind = kind
        c.ranking.direction = "both"
        c.views = ml_collections.ConfigDict()
        c.views.strength = 0.5                 # SimCLR's CIFAR colour jitter
        c.views.flip = True                    # CIFAR's objects are mirror-invariant (unlike digits)
        c.views.jitter_prob = 0.8
        c.views.grayscale_prob = 0.2
    else:
        c.mode = "labelled"
        c.metric_loss = "triplet"
        c.margin = 0.2
        c.mining = "semihard"
        c.data.samples_per_class = 4           # positives in every batch for the mining
    c.eval.zeroshot = ""
    c.eval.retrieval = ""
    c.eval.linear_probe = ""
    c.eval.image_retrieval = placeholder(str)  # required: "NAME=arrayrecord:OUT/test"
    # The metric losses shape Euclidean distances; the ranking losses the similarity.
    c.eval.image_retrieval_by = "distance" if mode == "labelled" else "similarity"
    return c
