"""Per-device memory of the linear probe's solve, rows on 1 device against rows sharded over 8, and the time of a
real fit at a size this machine holds.

    python benchmarks/linear_probe_memory.py [--rows 1281167] [--width 768] [--classes 1000]

Memory: nothing is allocated. linear_probe._solve (the whole L-BFGS while loop) is lowered on abstract
jax.ShapeDtypeStruct inputs (float32 features [N, F] padded to a multiple of the device count, labels, weights,
replicated parameters) and compiled for each mesh (8 fake CPU devices when no accelerator is present); XLA's
`compiled.memory_analysis()` gives one device's bytes: arguments (its rows of features, labels and weights, the
parameters) and temporaries (logits, gradients, L-BFGS's history). Default: ImageNet's train split, 768-wide
features, 1000 classes.

Time: a real `fit` (C = 1) of synthetic Gaussian-mixture features at --fit-rows x --fit-width, --fit-classes, on
1 and on all devices. With fake CPU devices the 8 share the same cores, so this shows the sharding's overhead,
not a speed-up.
"""
import argparse
import os
import time

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")  # only affects the CPU platform

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P  # noqa: E402

from wpce_jax.evaluate import linear_probe as lp  # noqa: E402

MIB = 2 ** 20


def solve_memory(mesh: Mesh, rows: int, width: int, classes: int):
    """(argument bytes, temporary bytes) of one device for the solve on `mesh`."""
    padded = -(-rows // mesh.size) * mesh.size
    sharded, replicated = lp.row_sharding(mesh), NamedSharding(mesh, P())

    def spec(shape, dtype, sharding):
        return jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)

    f32 = jnp.float32
    args = (spec((padded, width), f32, sharded), spec((padded,), jnp.int32, sharded), spec((padded,), f32, sharded),
            spec((width,), f32, replicated), spec((), f32, replicated), spec((width, classes), f32, replicated),
            spec((classes,), f32, replicated), spec((), f32, replicated), spec((), jnp.int32, replicated))
    analysis = lp._solve.lower(*args).compile().memory_analysis()
    return analysis.argument_size_in_bytes, analysis.temp_size_in_bytes


def synthetic(rows: int, width: int, classes: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, rows)
    centres = rng.normal(size=(classes, width)).astype(np.float32)
    return (centres[labels] + 2 * rng.normal(size=(rows, width)).astype(np.float32)), labels


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_281_167)
    parser.add_argument("--width", type=int, default=768)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--fit-rows", type=int, default=20_000)
    parser.add_argument("--fit-width", type=int, default=256)
    parser.add_argument("--fit-classes", type=int, default=100)
    a = parser.parse_args()
    devices = jax.devices()
    meshes = {1: Mesh(np.asarray(devices[:1]), ("rows",)), len(devices): Mesh(np.asarray(devices), ("rows",))}
    print(f"{jax.device_count()} {devices[0].platform} devices; features {a.rows} x {a.width} float32 "
          f"({a.rows * a.width * 4 / MIB:.0f} MiB), {a.classes} classes")
    print("per-device memory of the solve (compiled.memory_analysis, nothing allocated):")
    print(f"{'devices':>8} {'arguments MiB':>14} {'temporaries MiB':>16} {'total MiB':>10} {'1-device / this':>16}")
    totals = {}
    for count, mesh in meshes.items():
        arguments, temporaries = solve_memory(mesh, a.rows, a.width, a.classes)
        totals[count] = arguments + temporaries
        print(f"{count:>8} {arguments / MIB:>14.0f} {temporaries / MIB:>16.0f} {totals[count] / MIB:>10.0f} "
              f"{totals[1] / totals[count]:>16.2f}")
    x, y = synthetic(a.fit_rows, a.fit_width, a.fit_classes)
    print(f"a real fit (C = 1) of {a.fit_rows} x {a.fit_width} synthetic features, {a.fit_classes} classes "
          f"(first call compiles; the time is the second's):")
    print(f"{'devices':>8} {'seconds':>8} {'L-BFGS steps':>13} {'time / 1-device':>16}")
    times = {}
    for count, mesh in meshes.items():
        rows = lp.put_rows(x, mesh)
        lp.fit(rows, y, a.fit_classes, 1.0).weights.block_until_ready()
        start = time.perf_counter()
        probe = lp.fit(rows, y, a.fit_classes, 1.0)
        probe.weights.block_until_ready()
        times[count] = time.perf_counter() - start
        print(f"{count:>8} {times[count]:>8.2f} {int(probe.iterations):>13} {times[count] / times[1]:>16.2f}")


if __name__ == "__main__":
    main()
