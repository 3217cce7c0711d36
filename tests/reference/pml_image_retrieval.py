"""Writes pml_image_retrieval.json beside this file: pytorch-metric-learning's AccuracyCalculator on the leave-one-out
image retrieval data of tests/test_evaluate.py (`singleton_data`), the reference for image_retrieval.scores.

Not run by the tests (they never import torch). To regenerate, in a scratch virtual environment:
    pip install torch==2.13.0 pytorch-metric-learning numpy
    python tests/reference/pml_image_retrieval.py
Made with pytorch-metric-learning 2.9.0, torch 2.13.0 (CPU), numpy 2.4.
"""
import json
import os

import numpy as np
import pytorch_metric_learning
import torch
from pytorch_metric_learning.distances import DotProductSimilarity, LpDistance
from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
from pytorch_metric_learning.utils.inference import CustomKNN


def singleton_data():
    """(vectors float32 [70, 6], labels int [70]): four classes of 15, ten classes of one (no other image of their
    class), shuffled; the same as tests/test_evaluate.py's."""
    rng = np.random.default_rng(16)
    labels = rng.permutation(np.concatenate([np.repeat(np.arange(4), 15), np.arange(10, 20)]))
    vectors = (np.eye(6)[labels % 6] + 0.9 * rng.normal(size=(70, 6))) * rng.uniform(0.3, 3, (70, 1))
    return vectors.astype(np.float32), labels


def main():
    vectors, labels = singleton_data()
    out = {"pytorch_metric_learning": pytorch_metric_learning.__version__, "checksum": float(vectors.sum())}
    # Similarity ranks by the dot product, distance by the Euclidean distance (the order of the squared one); both
    # of the vectors as they are (pytorch-metric-learning normalises them by default).
    for by, distance in (("similarity", DotProductSimilarity(normalize_embeddings=False)),
                         ("distance", LpDistance(normalize_embeddings=False))):
        calculator = AccuracyCalculator(include=("precision_at_1", "r_precision", "mean_average_precision_at_r"),
                                        k="max_bin_count", device=torch.device("cpu"), knn_func=CustomKNN(distance))
        got = calculator.get_accuracy(torch.from_numpy(vectors), torch.from_numpy(labels))
        out[by] = {"precision@1": got["precision_at_1"], "r_precision": got["r_precision"],
                   "map@r": got["mean_average_precision_at_r"]}
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pml_image_retrieval.json")
    with open(path, "w") as f:
        json.dump(out, f, indent=1)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
