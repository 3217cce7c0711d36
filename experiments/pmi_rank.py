"""PMI rank: how closely can CLIP's inner product and WPCE's point-cloud kernel reach the InfoNCE optimum?

Setting (the paper's theory at a size where everything is exact). X and Y take N values each with a known joint
p(x, y) whose PMI matrix has full rank. A critic is any table f[x, y]. The large-batch (B -> infinity) symmetric
InfoNCE, with the log B that every finite batch adds removed, is

    L(f) = -E_p[f(x, y)] + 1/2 E_x log E_{y'~p(y)} exp f(x, y') + 1/2 E_y log E_{x'~p(x)} exp f(x', y).

For each x, -E_{y|x} f + log E_{p(y)} exp f >= -KL(p(y|x) || p(y)) (Gibbs / Donsker-Varadhan), with equality iff
f(x, .) = PMI(x, .) + c(x); the same holds for each y. Summing the two halves gives L(f) >= -I(X; Y), with equality
iff f = PMI + const. So gap(f) = L(f) + I >= 0 measures how far the critic family is from the PMI matrix (up to a
constant), weighted by p. Everything is computed in closed form from p: no sampling.

Critics, each a learned table of embeddings per discrete value, with a learned logit scale s = exp(log_s):
- clip: unit vectors u_x, v_y in R^d, f = s u_x . v_y. Such f has rank <= d, while PMI + c 11^T has rank >= N - 1,
  so the gap cannot reach 0 while d < N - 1.
- wpce: each value a cloud of M points in R^d with learned real weights; f = s g(P_x, Q_y) with the project's
  `exact_similarity` (linear + Gaussian kernel, the paper's sigma 0.5, a_lin 2/3, a_rff 1/3). The Gaussian kernel
  has infinite rank, so the rank bound does not apply.

Parameters are counted as stored numbers: clip 2 N d + 1, wpce 2 N M (d + 1) + 1 (points and weights; + 1 for s).
Each critic is trained with Adam on the exact loss from several random restarts (vmapped), keeping the best. The
reported gap is the exact loss of the trained float32 table f, evaluated in float64 NumPy, plus I; since any table
is a critic, it is >= 0 up to float64 rounding.

    python experiments/pmi_rank.py [--quick] [--out FILE]
"""
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import experiment_cli  # noqa: E402
from wpce_jax.pointcloud import PointCloud, exact_similarity  # noqa: E402

# The paper's kernel (docs/method.md): Gaussian, sigma 0.5, a_lin 0.667, a_rff 0.333.
KERNEL, SCALE, A_LIN, A_RFF = "gaussian", 0.5, 2.0 / 3.0, 1.0 / 3.0

# Quick and full settings: the joint's size N, the CLIP dimensions d tried, WPCE's points M at equal d, and the
# numbers of points of the equal-parameter WPCE critics (point dimension d / M - 1, so M (d_w + 1) = d).
SETTINGS = {
    "quick": dict(n=16, dims=(1, 2, 4, 8, 12, 16, 20), points=4, eq_points=(1, 2), steps=3000, restarts=3),
    "full": dict(n=32, dims=(1, 2, 4, 8, 16, 24, 32, 40), points=4, eq_points=(1, 2), steps=6000, restarts=4),
}


def make_joint(n: int, seed: int = 0, temperature: float = 1.5) -> np.ndarray:
    """A random positive joint p(x, y) = softmax over all cells of temperature * N(0, 1) logits ([n, n], float64).

    Its PMI is the logits minus row and column terms, a generic (full-rank) random matrix: `pmi_spectrum` checks.
    """
    logits = temperature * np.random.default_rng(seed).normal(size=(n, n))
    p = np.exp(logits - logits.max())
    return p / p.sum()


def pmi(p: np.ndarray) -> np.ndarray:
    return np.log(p) - np.log(p.sum(1, keepdims=True)) - np.log(p.sum(0, keepdims=True))


def mutual_information(p: np.ndarray) -> float:
    return float(np.sum(p * pmi(p)))


def pmi_spectrum(p: np.ndarray) -> np.ndarray:
    """Singular values of the PMI matrix (full rank: none is ~0)."""
    return np.linalg.svd(pmi(p), compute_uv=False)


def _logsumexp(a, axis):
    m = np.max(a, axis=axis, keepdims=True)
    return np.squeeze(m, axis) + np.log(np.sum(np.exp(a - m), axis=axis))


def exact_loss_np(f: np.ndarray, p: np.ndarray) -> float:
    """L(f) in float64 NumPy: the reference used for every reported gap."""
    f, p = np.asarray(f, np.float64), np.asarray(p, np.float64)
    px, py = p.sum(1), p.sum(0)
    row = _logsumexp(f + np.log(py)[None, :], axis=1)  # log E_{y'} exp f(x, y'), per x
    col = _logsumexp(f + np.log(px)[:, None], axis=0)  # log E_{x'} exp f(x', y), per y
    return float(-np.sum(p * f) + 0.5 * px @ row + 0.5 * py @ col)


def exact_loss(f: jax.Array, p: jax.Array) -> jax.Array:
    """L(f) in JAX (the training objective); same formula as `exact_loss_np`."""
    px, py = p.sum(1), p.sum(0)
    row = jax.nn.logsumexp(f + jnp.log(py)[None, :], axis=1)
    col = jax.nn.logsumexp(f + jnp.log(px)[:, None], axis=0)
    return -jnp.sum(p * f) + 0.5 * px @ row + 0.5 * py @ col


def _unit(v):
    return v / jnp.maximum(jnp.linalg.norm(v, axis=-1, keepdims=True), 1e-6)


def clip_critic(params) -> jax.Array:
    return jnp.exp(params["log_s"]) * _unit(params["u"]) @ _unit(params["v"]).T


def wpce_critic(params) -> jax.Array:
    g = exact_similarity(PointCloud(params["px"], params["wx"]), PointCloud(params["py"], params["wy"]),
                         KERNEL, SCALE, A_LIN, A_RFF)
    return jnp.exp(params["log_s"]) * g


def init_params(key, similarity: str, n: int, dim: int, points: int):
    k1, k2, k3, k4 = jax.random.split(key, 4)
    log_s = jnp.log(jnp.float32(1 / 0.07))  # CLIP's initial logit scale
    if similarity == "clip":
        return {"u": jax.random.normal(k1, (n, dim)), "v": jax.random.normal(k2, (n, dim)), "log_s": log_s}
    return {"px": jax.random.normal(k1, (n, points, dim)), "wx": jax.random.normal(k2, (n, points)),
            "py": jax.random.normal(k3, (n, points, dim)), "wy": jax.random.normal(k4, (n, points)),
            "log_s": jnp.float32(0.0)}  # weights are free, so s only sets the initial logit range


def num_params(similarity: str, n: int, dim: int, points: int) -> int:
    return 2 * n * dim + 1 if similarity == "clip" else 2 * n * points * (dim + 1) + 1


def train(p: np.ndarray, similarity: str, dim: int, points: int, steps: int, restarts: int, seed: int = 0,
          lr: float = 0.03):
    """Adam on the exact loss from `restarts` random inits at once (vmapped). Returns the best critic table f
    (float32 [N, N], as a float64 array) and the final exact losses of all restarts."""
    critic = clip_critic if similarity == "clip" else wpce_critic
    p32 = jnp.asarray(p, jnp.float32)
    opt = optax.adam(optax.cosine_decay_schedule(lr, steps, alpha=0.01))

    def loss_fn(params):
        return exact_loss(critic(params), p32)

    def run(key):
        params = init_params(key, similarity, p.shape[0], dim, points)

        def step(carry, _):
            params, state = carry
            loss, grads = jax.value_and_grad(loss_fn)(params)
            updates, state = opt.update(grads, state, params)
            return (optax.apply_updates(params, updates), state), loss

        (params, _), _ = jax.lax.scan(step, (params, opt.init(params)), None, length=steps)
        return critic(params)

    keys = jax.random.split(jax.random.PRNGKey(seed), restarts)
    tables = np.asarray(jax.jit(jax.vmap(run))(keys), np.float64)
    losses = np.array([exact_loss_np(f, p) for f in tables])
    return tables[int(np.argmin(losses))], losses


def configs(setting: dict):
    """(similarity, family, d, M) to train: CLIP at each d; WPCE at equal d (M = points); WPCE at equal parameters
    as CLIP at d, for each M in eq_points: point dimension d / M - 1 (where that is a whole number >= 1)."""
    out = [("clip", "clip", d, 1) for d in setting["dims"]]
    out += [("wpce", "equal_dim", d, setting["points"]) for d in setting["dims"]]
    out += [("wpce", f"equal_params_M{m}", d // m - 1, m)
            for m in setting["eq_points"] for d in setting["dims"] if d % m == 0 and d // m >= 2]
    return out


def run_experiment(setting: dict, seed: int = 0, log=print) -> dict:
    p = make_joint(setting["n"], seed)
    info = mutual_information(p)
    spectrum = pmi_spectrum(p)
    log(f"N = {setting['n']}, I(X;Y) = {info:.4f} nats, PMI singular values {spectrum.max():.3g} .. "
        f"{spectrum.min():.3g}")
    rows = []
    for similarity, family, dim, points in configs(setting):
        start = time.perf_counter()
        _, losses = train(p, similarity, dim, points, setting["steps"], setting["restarts"], seed)
        gaps = losses + info
        row = {"similarity": similarity, "family": family, "dim": dim, "points": points,
               "params": num_params(similarity, setting["n"], dim, points), "gap": float(gaps.min()),
               "restart_gaps": [float(g) for g in gaps], "seconds": round(time.perf_counter() - start, 2)}
        rows.append(row)
        log(f"{family:>12} d={dim:<3} M={points:<2} params={row['params']:<5} gap={row['gap']:.3e} "
            f"({row['seconds']} s)")
    return {"mutual_information": info, "n": setting["n"], "pmi_singular_values": spectrum.tolist(),
            "kernel": {"kind": KERNEL, "scale": SCALE, "a_lin": A_LIN, "a_rff": A_RFF},
            "steps": setting["steps"], "restarts": setting["restarts"], "seed": seed, "rows": rows}


def plot(result: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    floor = 1e-7  # log axis: show gaps below this at the floor
    fig, (ax_d, ax_p) = plt.subplots(1, 2, figsize=(10, 4))
    series = [("clip", "CLIP (unit vectors)", "o-"), ("equal_dim", "WPCE, equal d", "s-")]
    series += [(f, f"WPCE M={f.split('_M')[1]}, d = params/M - 1", "^--")
               for f in dict.fromkeys(r["family"] for r in result["rows"]) if f.startswith("equal_params")]
    for family, label, style in series:
        rows = [r for r in result["rows"] if r["family"] == family]
        if not rows:
            continue
        gaps = [max(r["gap"], floor) for r in rows]
        if not family.startswith("equal_params"):
            m = rows[0]["points"]
            ax_d.plot([r["dim"] for r in rows], gaps, style, label=label + ("" if family == "clip" else f" (M={m})"))
        ax_p.plot([(r["params"] - 1) / (2 * result["n"]) for r in rows], gaps, style,
                  label=label)
    ax_d.set_xlabel("point dimension d")
    ax_p.set_xlabel("parameters per discrete value")
    for ax in (ax_d, ax_p):
        ax.set_yscale("log")
        ax.set_ylabel("gap  L - (-I)  [nats]")
        ax.axvline(result["n"] - 1, color="gray", ls=":", lw=1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"Exact symmetric InfoNCE gap, N = {result['n']}, I = {result['mutual_information']:.3f} nats "
                 f"(dotted: N - 1)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    return experiment_cli.main(__doc__, SETTINGS, run_experiment, plot, "small N, fewer steps (minutes on 2 CPU cores)", argv)


if __name__ == "__main__":
    main()
