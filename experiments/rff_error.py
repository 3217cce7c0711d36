"""RFF error: how fast does the random-Fourier-feature estimate of each kernel converge as D grows?

For each shift-invariant kernel of `wpce_jax.kernels` (gaussian, imq, cauchy, laplacian) at the paper's scale 0.5:

- vectors: P random pairs of unit vectors u, v in R^d (uniform on the sphere; d = 3 so |u - v| covers [0, 2]
  evenly: |u - v|^2 is uniform on [0, 4]), exact k(u, v) (`exact_kernel`) against z(u) . z(v) (`rff_map` of one
  `sample_rff` draw);
- clouds: P random pairs of weighted clouds (M points, N(0, 1) weights), the kernel part of the similarity, exact
  (`exact_similarity` with a_lin 0, a_rff 1) against phi(P) . phi(Q) (`feature_map`).

The error is averaged over R independent draws: RMS = sqrt(mean over draws and pairs of (estimate - exact)^2).
Each estimate is a mean of D bounded i.i.d. terms, so RMS ~ C / sqrt(D): the fitted log-log slope should be near
-1/2 for every kernel (the laplacian's heavy-tailed frequencies change C, not the rate).

    python experiments/rff_error.py [--quick] [--out FILE]
"""
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import experiment_cli  # noqa: E402
from wpce_jax.kernels import KINDS, exact_kernel, rff_map, sample_rff  # noqa: E402
from wpce_jax.pointcloud import PointCloud, exact_similarity, feature_map  # noqa: E402

SCALE = 0.5  # the paper's sigma (docs/method.md), used for every kind

SETTINGS = {
    "quick": dict(dims=3, pairs=64, points=4, draws=100, features=(8, 32, 128, 512, 2048)),
    "full": dict(dims=3, pairs=128, points=4, draws=400, features=(8, 32, 128, 512, 2048, 8192)),
}


def _unit(x):
    return x / jnp.linalg.norm(x, axis=-1, keepdims=True)


def make_inputs(key, setting):
    """Random unit-vector pairs ([P, d] each) and random cloud pairs (PointCloud [P, M, d] each)."""
    k = jax.random.split(key, 6)
    p, m, d = setting["pairs"], setting["points"], setting["dims"]
    u, v = _unit(jax.random.normal(k[0], (p, d))), _unit(jax.random.normal(k[1], (p, d)))
    cx = PointCloud(jax.random.normal(k[2], (p, m, d)), jax.random.normal(k[3], (p, m)))
    cy = PointCloud(jax.random.normal(k[4], (p, m, d)), jax.random.normal(k[5], (p, m)))
    return u, v, cx, cy


def rms_errors(key, kind: str, num_features: int, setting, inputs):
    """RMS error of the vector and the cloud estimates over `draws` RFF draws at D = num_features."""
    u, v, cx, cy = inputs
    exact_vec = jnp.diagonal(exact_kernel(kind, SCALE)(u, v))
    exact_cloud = jnp.diagonal(exact_similarity(cx, cy, kind, SCALE, 0.0, 1.0))

    def squared_errors(draw_key):
        rff = sample_rff(draw_key, kind, setting["dims"], num_features, SCALE)
        vec = jnp.sum(rff_map(u, rff) * rff_map(v, rff), -1)
        cloud = jnp.sum(feature_map(cx, rff, 0.0, 1.0) * feature_map(cy, rff, 0.0, 1.0), -1)
        return jnp.mean((vec - exact_vec) ** 2), jnp.mean((cloud - exact_cloud) ** 2)

    # lax.map, not vmap: one draw's [P, D] features at a time keeps memory flat at large D.
    sq_vec, sq_cloud = jax.lax.map(squared_errors, jax.random.split(key, setting["draws"]))
    return float(jnp.sqrt(sq_vec.mean())), float(jnp.sqrt(sq_cloud.mean()))


def fit_slope(features, errors) -> float:
    """Least-squares slope of log(error) against log(D)."""
    return float(np.polyfit(np.log(features), np.log(errors), 1)[0])


def run_experiment(setting: dict, seed: int = 0, log=print) -> dict:
    key_inputs, key_draws = jax.random.split(jax.random.PRNGKey(seed))
    inputs = make_inputs(key_inputs, setting)
    features = list(setting["features"])
    kernels = {}
    for kind in KINDS:
        start = time.perf_counter()
        vec, cloud = [], []
        for num_features in features:
            # A different key per D, so the errors at different D are independent estimates.
            key = jax.random.fold_in(jax.random.fold_in(key_draws, KINDS.index(kind)), num_features)
            e_vec, e_cloud = rms_errors(key, kind, num_features, setting, inputs)
            vec.append(e_vec)
            cloud.append(e_cloud)
        kernels[kind] = {"D": features, "rms_error": vec, "slope": fit_slope(features, vec),
                         "cloud_rms_error": cloud, "cloud_slope": fit_slope(features, cloud),
                         "seconds": round(time.perf_counter() - start, 2)}
        log(f"{kind:>9}: slope {kernels[kind]['slope']:+.3f} (clouds {kernels[kind]['cloud_slope']:+.3f}); "
            + " ".join(f"D={D}:{e:.2e}" for D, e in zip(features, vec)))
    return {"scale": SCALE, **{k: setting[k] for k in ("dims", "pairs", "points", "draws")}, "seed": seed,
            "kernels": kernels}


def plot(result: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, field, slope, title in ((axes[0], "rms_error", "slope", f"unit vectors in R^{result['dims']}"),
                                    (axes[1], "cloud_rms_error", "cloud_slope",
                                     f"weighted clouds, M = {result['points']}")):
        for kind, k in result["kernels"].items():
            ax.loglog(k["D"], k[field], "o-", label=f"{kind} (slope {k[slope]:+.2f})")
        d = np.asarray(next(iter(result["kernels"].values()))["D"], float)
        ref = next(iter(result["kernels"].values()))[field][0] * np.sqrt(d[0] / d)
        ax.loglog(d, ref, "k:", label="D^(-1/2)")
        ax.set_xlabel("random features D")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    axes[0].set_ylabel(f"RMS error over {result['draws']} draws x {result['pairs']} pairs")
    fig.suptitle(f"RFF estimate vs exact kernel (scale {result['scale']})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    return experiment_cli.main(__doc__, SETTINGS, run_experiment, plot, "fewer draws and a smaller largest D", argv)


if __name__ == "__main__":
    main()
