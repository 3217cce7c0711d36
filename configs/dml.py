"""Zero-shot deep metric learning on CUB-200-2011, Cars196 and Stanford Online Products (labelled mode).

Standard protocol: train on the first half of the classes, test image->image retrieval on the unseen second half
(CUB 0-99 / 100-199, Cars 0-97 / 98-195, SOP 0-11317 / 11318-22633). Prepare the data once:

    tfds build caltech_birds2011 --data_dir=$TFDS --file_format=array_record
    python -m wpce_jax.data.tfds_to_records --name caltech_birds2011 --data_dir $TFDS --output /data/cub
    python -m wpce_jax.data.train_tokenizer --data /data/cub/train --output /data/cub/spm --vocab_size 1000

(cars: cars196 -> /data/cars; sop: stanford_online_products -> /data/sop). The trainer builds the text tower even
though labelled mode never runs it, so it needs a tokenizer: the SentencePiece model trained above on the class
captions (any small vocabulary works; train_tokenizer shrinks it if the captions cannot support it). Then

    python -m wpce_jax.main --config=configs/dml.py:cub --workdir=/tmp/cub_wpce \\
        --config.data.train_dir=/data/cub/train --config.data.tokenizer_path=/data/cub/spm.model \\
        --config.eval.image_retrieval=cub=arrayrecord:/data/cub/test

The argument is "cub" | "cars" | "sop", optionally followed by ",wpce" (default) or ",clip" and by ",triplet"
(default, semihard mining) or ",margin_contrastive", e.g. `configs/dml.py:sop,clip,margin_contrastive`.
Reported metrics: image_retrieval/NAME/{recall@k, map@r} on the test classes, ranked by distance.

Settings: ViT-S/16 at 224 px, batch 128. The usual DML recipes (Roth et al. 2020 "Revisiting Training Strategies
and Generalization Performance in Deep Metric Learning"; Musgrave et al. 2020 "A Metric Learning Reality Check")
fine-tune an ImageNet-pretrained backbone with Adam at lr ~1e-5 and sample several images per class in a batch (here
too: data.samples_per_class = 4); this trainer starts from scratch, so the optimiser below follows DeiT's
from-scratch ViT recipe instead and the absolute numbers are not comparable to the published ones.
"""
from ml_collections.config_dict import placeholder

from configs import common

# Training images in the train half (classes of the first half): CUB 5,864, Cars196 8,054, SOP 59,551.
TRAIN_IMAGES = {"cub": 5864, "cars": 8054, "sop": 59551}
# Epochs of the usual recipes: Roth et al. 2020 train 150 epochs on CUB and Cars; SOP is commonly 100 epochs.
EPOCHS = {"cub": 150, "cars": 150, "sop": 100}
MARGINS = {"triplet": 0.2, "margin_contrastive": 1.0}  # FaceNet's 0.2 on squared distances; 1.0 on distances
BATCH = 128


def get_config(arg: str = "cub"):
    dataset, similarity, metric_loss = common.parse_arg(__file__, arg, dataset=(None, *TRAIN_IMAGES),
                                                       similarity=common.SIMILARITIES, metric_loss=tuple(MARGINS))
    c = common.base()
    c.model.similarity = similarity
    c.mode = "labelled"
    c.metric_loss = metric_loss
    c.margin = MARGINS[metric_loss]
    c.mining = "semihard"             # triplet only: "semihard" (FaceNet; Roth et al.'s default) | "hard" | "all"

    steps_per_epoch = -(-TRAIN_IMAGES[dataset] // BATCH)
    c.batch_size = BATCH
    c.total_steps = EPOCHS[dataset] * steps_per_epoch
    c.log_every_steps = 50
    c.eval_every_steps = 10 * steps_per_epoch      # every 10 epochs
    c.checkpoint_every_steps = 10 * steps_per_epoch

    c.data.kind = "arrayrecord"
    c.data.train_dir = placeholder(str)            # required: OUT/train of wpce_jax.data.tfds_to_records
    c.data.tokenizer = "sentencepiece"
    c.data.tokenizer_path = placeholder(str)       # required: a .model from wpce_jax.data.train_tokenizer
    c.data.image_size = 224                        # the DML recipes' 224 px RandomResizedCrop
    c.data.crop_scale = (0.08, 1.0)                # torchvision's RandomResizedCrop default, as in the DML recipes
    c.data.samples_per_class = 4                   # 32 classes x 4 images a batch: positives for the mining (m = 4)

    c.model.image.variant = "S/16"
    c.model.embed_dim = 512                        # Roth et al. / Musgrave et al. report 128 and 512; 512 here
    c.model.text.context_length = 32               # captions are "a photo of a <class name>"

    # DeiT (Touvron et al. 2021), from-scratch ViT: AdamW lr 5e-4 x batch/512, weight decay 0.05, 5 warm-up epochs.
    c.optim.lr = 5e-4 * BATCH / 512
    c.optim.warmup_steps = 5 * steps_per_epoch
    c.optim.weight_decay = 0.05
    c.optim.b2 = 0.999

    c.eval.batch_size = 256
    c.eval.zeroshot = ""
    c.eval.retrieval = ""
    c.eval.linear_probe = ""
    c.eval.image_retrieval = placeholder(str)      # required: "NAME=arrayrecord:OUT/test"
    c.eval.image_retrieval_by = "distance"         # the metric losses shape Euclidean distances
    return c
