"""The device mesh, its shardings, and process-local batches turned into global arrays.

The mesh has two axes, "data" x "fsdp" (`config.mesh.fsdp` devices on "fsdp"), and the batch is split over both,
that is over every device of every process (`BATCH_AXES` names the pair). Each process feeds its own slice of the
global batch; `global_batch` stitches the slices into one jax.Array sharded over the batch axes.

Parameters and optimiser state are split over "fsdp" (`state_shardings`; fully sharded data parallel, ZeRO-3):
each array along its largest dimension that "fsdp" divides, everything else replicated. Under jit, XLA gathers a
layer's weights where the towers use them and reduce-scatters their gradients, so with fsdp = f each device holds
1/f of the parameters and of Adam's moments. fsdp = 1 (the default) is plain data parallelism.
"""
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from wpce_jax.errors import ConfigError

FSDP_AXIS = "fsdp"
BATCH_AXES = ("data", FSDP_AXIS)  # the mesh axes the batch is split over (all of them); shard_map's axis_name
SCANNED = "blocks"  # parameters under this name are stacked on a leading layer axis (nn.scan), never split


def make_mesh(devices=None, fsdp: int = 1) -> Mesh:
    """A ("data", "fsdp") mesh of shape (n / fsdp, fsdp) over `devices` (default: all). Auto axis types: jit
    propagates the batch and parameter shardings through the towers."""
    devices = jax.devices() if devices is None else list(devices)
    if fsdp < 1 or len(devices) % fsdp:
        raise ConfigError(f"config.mesh.fsdp = {fsdp} must be a divisor of the number of devices ({len(devices)})")
    return jax.make_mesh((len(devices) // fsdp, fsdp), ("data", FSDP_AXIS), axis_types=(AxisType.Auto,) * 2,
                         devices=devices)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over every device, the rest whole."""
    return NamedSharding(mesh, P(BATCH_AXES))


def fsdp_spec(path, shape: tuple[int, ...], fsdp: int) -> P:
    """The PartitionSpec of one parameter (or optimiser moment) of `shape` at tree `path`: its largest dimension
    that `fsdp` divides (the last of equals) split over "fsdp", except the layer axis of scanned blocks, which the
    scan slices; replicated when no dimension divides, and for scalars."""
    if fsdp == 1:
        return P()
    scanned = any(getattr(k, "key", None) == SCANNED for k in path)
    axes = [a for a in range(scanned, len(shape)) if shape[a] % fsdp == 0]
    if not axes:
        return P()
    axis = max(axes, key=lambda a: (shape[a], a))
    return P(*(FSDP_AXIS if a == axis else None for a in range(len(shape))))


def _is_block(key) -> bool:
    name = str(getattr(key, "key", ""))
    return name == SCANNED or name.startswith("block_")


def gather_fsdp(tree, skip_blocks: bool = False) -> Any:
    """Parameters gathered whole where they are used, when traced under `jax.sharding.use_abstract_mesh(mesh)` of
    a mesh with fsdp > 1 (the train step and the evaluation encoders do this); otherwise `tree` unchanged.

    Each leaf is held split per `fsdp_spec`, then constrained whole: XLA all-gathers it at that point and
    reduce-scatters its gradient there. Left to itself, sharding propagation meets batch-split activations and
    fsdp-split weights at every matmul and may gather the batch instead (every device then computes the whole
    batch), or gather a scanned stack of layers before the loop. The transformer blocks call this on their own
    weights, layer by layer (models/transformer.py); `skip_blocks` leaves those subtrees to them."""
    mesh = jax.sharding.get_abstract_mesh()
    fsdp = dict(zip(mesh.axis_names, mesh.axis_sizes)).get(FSDP_AXIS, 1)
    if fsdp == 1:
        return tree

    def gather(path, x):
        if skip_blocks and any(_is_block(k) for k in path):
            return x
        split = jax.lax.with_sharding_constraint(x, fsdp_spec(path, x.shape, fsdp))
        return jax.lax.with_sharding_constraint(split, P())

    return jax.tree.map_with_path(gather, tree)


def apply_gathered(model, mesh: Mesh, params, inputs, method: str) -> Any:
    """`model.apply` of `method` with parameters held split over "fsdp" (or whole), to be traced under jit: it runs
    under `mesh`'s abstract mesh, so that each weight is gathered whole where it is used (`gather_fsdp`)."""
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
        return model.apply({"params": gather_fsdp(params, skip_blocks=True)}, inputs, method=method)


def largest_fsdp(fsdp: int, devices: int) -> int:
    """The largest divisor of `devices` that is at most `fsdp`: the split a run saved with `fsdp` gets where
    `devices` are present (fsdp itself when it divides them; 1 on one device)."""
    return max(f for f in range(1, min(fsdp, devices) + 1) if devices % f == 0)


def fsdp_shardings(tree, mesh: Mesh) -> Any:
    """NamedShardings per `fsdp_spec` for a tree of parameters or optimiser moments (arrays or ShapeDtypeStructs)."""
    fsdp = mesh.shape[FSDP_AXIS]
    return jax.tree_util.tree_map_with_path(lambda path, x: NamedSharding(mesh, fsdp_spec(path, x.shape, fsdp)), tree)


def state_shardings(state, mesh: Mesh) -> Any:
    """NamedShardings for a TrainState (arrays or ShapeDtypeStructs): params and opt_state per `fsdp_spec`, the
    rest (step, keys, evaluation RFF draw) replicated."""
    rest = jax.tree.map(lambda _: replicated(mesh), state._replace(params=None, opt_state=None))
    return rest._replace(params=fsdp_shardings(state.params, mesh), opt_state=fsdp_shardings(state.opt_state, mesh))


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
        raise ConfigError(f"config.{what} = {global_size} must be divisible by the number of devices ({devices})")
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
