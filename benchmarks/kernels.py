"""RFF feature maps + one similarity matmul against the exact double kernel sum, timed side by side.

    python benchmarks/kernels.py [--batches 64,256,1024] [--exact_rows 64]

Image clouds have M = 197 points (ViT-B/16 at 224), text clouds M = 77, d = 512, D = 1024 (the paper's setting).
The exact path costs O(B^2 M_img M_txt d); where a full B x B exact matrix would take minutes on this machine it
is timed on the first `--exact_rows` image clouds against all B text clouds and scaled by B / rows (it is linear
in the rows); such rows are marked "extrapolated".
"""
import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from wpce_jax import kernels
from wpce_jax.pointcloud import PointCloud, exact_similarity, feature_map

M_IMG, M_TXT, DIM, FEATURES = 197, 77, 512, 1024
A_LIN, A_RFF, SIGMA = 0.667, 0.333, 0.5


def timed(fn, *args, repeats=3):
    jax.block_until_ready(fn(*args))  # compile
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - start)
    return best


def cloud(rng, b, m):
    return PointCloud(jnp.asarray(rng.normal(size=(b, m, DIM)), jnp.float32),
                      jnp.asarray(rng.normal(size=(b, m)), jnp.float32))


@jax.jit
def rff_similarity(x, y, rff):
    return feature_map(x, rff, A_LIN, A_RFF) @ feature_map(y, rff, A_LIN, A_RFF).T


@jax.jit
def exact(x, y):
    return exact_similarity(x, y, "gaussian", SIGMA, A_LIN, A_RFF)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", default="64,256,1024")
    parser.add_argument("--exact_rows", type=int, default=64, help="image clouds timed exactly when B > 256")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    rff = kernels.sample_rff(jax.random.key(0), "gaussian", DIM, FEATURES, SIGMA)
    print(f"device: {jax.devices()[0].device_kind}, M_img={M_IMG}, M_txt={M_TXT}, d={DIM}, D={FEATURES}")
    print(f"{'B':>6} {'rff map+matmul (s)':>19} {'exact (s)':>11} {'exact / rff':>12}  note")
    for b in (int(s) for s in args.batches.split(",")):
        x, y = cloud(rng, b, M_IMG), cloud(rng, b, M_TXT)
        t_rff = timed(rff_similarity, x, y, rff)
        rows = b if b <= 256 else min(args.exact_rows, b)
        x_rows = PointCloud(x.points[:rows], x.weights[:rows])
        t_exact = timed(exact, x_rows, y, repeats=1 if rows * b > 256 * 256 else 3) * b / rows
        note = "" if rows == b else f"extrapolated from {rows} x {b}"
        print(f"{b:>6} {t_rff:>19.4f} {t_exact:>11.3f} {t_exact / t_rff:>11.0f}x  {note}", flush=True)


if __name__ == "__main__":
    main()
