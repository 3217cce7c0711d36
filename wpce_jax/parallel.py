"""The device mesh, its shardings, and process-local batches turned into global arrays.

Training is data parallel over one mesh axis, "data", spanning every device of every process. Each process feeds
its own slice of the global batch; `global_batch` stitches the slices into one jax.Array sharded over the axis.
"""
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def make_mesh(devices=None) -> Mesh:
    """A 1-D mesh over `devices` (default: all). Auto axis types: jit propagates the batch sharding through the
    towers."""
    devices = jax.devices() if devices is None else list(devices)
    return jax.make_mesh((len(devices),), (DATA_AXIS,), axis_types=(AxisType.Auto,), devices=devices)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over "data", the rest whole."""
    return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def global_batch(local: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Process-local numpy batch {name: [b_local, ...]} -> global arrays [b_local * process_count, ...]."""
    sharding = batch_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in local.items()}


def per_process_batch(global_size: int, what: str = "batch_size") -> int:
    """The slice of a global batch each process feeds, with a clear error when it does not divide evenly."""
    devices, processes = jax.device_count(), jax.process_count()
    if global_size % devices:
        raise ValueError(f"config.{what} = {global_size} must be divisible by the number of devices ({devices})")
    return global_size // processes


def to_host(tree: Any) -> Any:
    """Fully replicated (or fully addressable) arrays -> numpy, on every process."""
    return jax.tree.map(lambda x: np.asarray(jax.device_get(x)), tree)


def replicate(tree: Any, mesh: Mesh) -> Any:
    """A tree of host or single-device arrays (the same values on every process) -> global arrays replicated
    over `mesh`; works across processes, where device_put onto other hosts' devices cannot."""
    sharding = replicated(mesh)

    def put(x):
        host = np.asarray(jax.device_get(x))
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return jax.tree.map(put, tree)
