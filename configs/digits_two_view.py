"""SimCLR-style training of the image tower alone on the digits: two augmented views per image, NT-Xent.

    python -m wpce_jax.main --config=configs/digits_two_view.py --workdir=/tmp/digits_two_view
    python -m wpce_jax.main --config=configs/digits_two_view.py:clip --workdir=/tmp/digits_two_view_clip

The views: RandomResizedCrop(data.crop_scale) then SimCLR's colour jitter (strength views.strength, probability
views.jitter_prob) and grayscale (views.grayscale_prob); no horizontal flip (views.flip), because a mirrored digit
is not the same digit. The text tower is never run, so the evaluation is the linear probe alone
("linear_probe/digits/top1"); zero-shot and image-text retrieval would measure an untrained text tower.
"""
import ml_collections

from configs import common, digits


def get_config(arg: str = "wpce"):
    [similarity] = common.parse_arg(__file__, arg, similarity=common.SIMILARITIES)
    c = digits.get_config(similarity)
    c.mode = "two_view"
    c.mode_temperature = 0.1          # SimCLR's ImageNet temperature (0.5 is its CIFAR-10 choice)
    c.data.crop_scale = (0.4, 1.0)    # stronger than image_text's (0.7, 1.0): the views must differ, strokes stay
    c.views = ml_collections.ConfigDict()
    c.views.strength = 0.5            # colour-jitter strength s (SimCLR: 1.0 on ImageNet, 0.5 on CIFAR-10)
    c.views.flip = False              # digits are not mirror-invariant
    c.views.jitter_prob = 0.8
    c.views.grayscale_prob = 0.2      # a no-op on the (already gray) digits; kept for the recipe
    c.eval.zeroshot = ""
    c.eval.retrieval = ""
    c.eval.linear_probe = "digits"
    return c
