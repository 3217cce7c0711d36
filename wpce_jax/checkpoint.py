"""Orbax checkpoints of a run: saving, restoring the training state, reading a source run's parameters.

A checkpoint DIR/checkpoints/<step>/ holds four items:
    state     the TrainState: parameters, optimiser state, step, root RNG key, non-finite marker, evaluation RFF draw;
    position  {"examples_seen": global training examples consumed, "skipped_examples": how many of them were
              stand-ins for unreadable records}: where the data stream goes on (it is addressed by global example
              index, so any worker or process count resumes it exactly);
    config    the run's resolved config as JSON (the tokenizer path in it points at the copy under DIR/tokenizer/);
    plan      the run plan (data/run_data.RunPlan as JSON: the data's size, the tokenizer, the step counts), which the
              resume check compares (run_record.check_plan); checkpoints written before it, and imported ones, have
              none.
DIR may be local or gs://. Saving is asynchronous; Orbax marks a checkpoint complete only when all of it is written
(a renamed temporary directory on local disks, a commit_success.txt object on gs://), so a run killed while saving
leaves the previous checkpoint intact. A damaged checkpoint is moved aside to <step>.damaged by `Checkpointer.skip`,
so that the run can go on from an earlier one (which failures count as damage: wpce_jax/restore.py).

Reading a checkpoint for evaluation and notebooks (parameters and the evaluation RFF draw only) is
wpce_jax/inference.py's; `load` and `restore` here are its functions.
"""
import json
from typing import Any, NamedTuple, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from ml_collections import ConfigDict

from wpce_jax.errors import MissingInputError, UserError
from wpce_jax.paths import resolved

CHECKPOINT_SUBDIR = "checkpoints"
_ITEMS = ("state", "position", "config", "plan")  # the items of a checkpoint (module docstring)
_COMMIT = "commit_success.txt"  # Orbax writes it last, in the step and in each item (local disks and gs://)


def config_to_json(config: ConfigDict) -> dict:
    return json.loads(config.to_json_best_effort())


def checkpoint_dir(workdir) -> epath.Path:
    """DIR/checkpoints, absolute for local paths (Orbax needs that), gs:// URIs as they are."""
    return resolved(workdir) / CHECKPOINT_SUBDIR


class IncompatibleCheckpointError(UserError, ValueError):
    """A checkpoint written by an older version of the code, which this version cannot resume."""


def _state_saver() -> ocp.PyTreeCheckpointHandler:
    """The state item's writer: Orbax's standard one (the same files; StandardCheckpointHandler reads them), except
    that on CPU hosts a replicated array is copied out whole from one device. Orbax's replica-parallel saving splits
    the copy over the replicas (worth it where each device has its own memory and link; Orbax itself turns it off on
    GPUs), but on CPU devices share the host's memory, and each slice is a small program compiled on first use: about
    a hundred of them at a run's first save (4 s for the tiny test model on 2 cores, most of its save)."""
    arrays = ocp.type_handlers.ArrayHandler(use_replica_parallel=False if jax.default_backend() == "cpu" else None)
    registry = ocp.type_handlers.create_type_handler_registry(
        (int, ocp.type_handlers.ScalarHandler()), (float, ocp.type_handlers.ScalarHandler()),
        (np.number, ocp.type_handlers.ScalarHandler()), (np.ndarray, ocp.type_handlers.NumpyHandler()),
        (jax.Array, arrays))
    return ocp.PyTreeCheckpointHandler(type_handler_registry=registry)


class Checkpointer:
    """The run's CheckpointManager: keeps the last `max_to_keep` checkpoints under DIR/checkpoints."""

    def __init__(self, workdir, max_to_keep: int, async_save: bool = True):
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, enable_async_checkpointing=async_save,
                                               create=True)
        self.directory = checkpoint_dir(workdir)
        handlers = {"state": _state_saver(), **{item: ocp.JsonCheckpointHandler() for item in _ITEMS[1:]}}
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_handlers=handlers)
        self._json, self._state = ocp.JsonCheckpointHandler(), ocp.StandardCheckpointHandler()

    def latest_step(self) -> Optional[int]:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def save(self, step: int, state, examples_seen: int, config: ConfigDict, skipped_examples: int = 0,
             plan: Optional[dict] = None) -> None:
        items = dict(state=ocp.args.PyTreeSave(state),
                     position=ocp.args.JsonSave({"examples_seen": int(examples_seen),
                                                 "skipped_examples": int(skipped_examples)}),
                     config=ocp.args.JsonSave(config_to_json(config)))
        if plan is not None:
            items["plan"] = ocp.args.JsonSave(plan)
        self.manager.save(step, args=ocp.args.Composite(**items), force=True)

    # A step is read through Orbax's item handlers rather than the manager: the manager's restore ends in a barrier
    # of all processes, so a process whose read failed would leave the others waiting in it until its timeout;
    # reading is per process (each reads its own shards), and wpce_jax/restore.py has the processes agree after.

    def unfinished(self, step: int) -> list[str]:
        """The commit markers (commit_success.txt, written last by Orbax) that checkpoint `step` and its items lack.
        (A missing item is for the restore to report: an older version's checkpoint has other items.)"""
        step_dir = self.directory / str(step)
        return [f"{p.relative_to(self.directory)}/{_COMMIT}" for p in (step_dir, *(step_dir / i for i in _ITEMS if
                (step_dir / i).exists())) if not (p / _COMMIT).exists()]

    def saved_config(self, step: int) -> dict:
        """The config a checkpoint was written with (plain dict)."""
        return dict(self._json.restore(self.directory / str(step) / "config"))

    def saved_plan(self, step: int) -> Optional[dict]:
        """The run plan a checkpoint was written with (plain dict), or None when it has none (module docstring)."""
        item = self.directory / str(step) / "plan"
        return dict(self._json.restore(item)) if item.exists() else None

    def saved_shapes(self, step: int) -> dict[str, tuple]:
        """'/'-joined path -> shape of every array in checkpoint `step`'s TrainState, from its metadata (the arrays
        are not read)."""
        return array_shapes(self._state.metadata(self.directory / str(step) / "state").tree)

    def skipped_examples(self, step: int) -> int:
        """How many of the examples before checkpoint `step` were stand-ins (0 for checkpoints that predate it)."""
        position = self.manager.restore(step, args=ocp.args.Composite(position=ocp.args.JsonRestore()))["position"]
        return int(position.get("skipped_examples", 0))

    def restore(self, step: int, abstract_state) -> tuple[Any, int]:
        """(state shaped and sharded like `abstract_state`, global examples consumed) of checkpoint `step`."""
        step_dir = self.directory / str(step)
        if not (step_dir / "position").exists() and (step_dir / "data").exists():
            raise IncompatibleCheckpointError(
                f"{step_dir} holds a data-iterator state instead of a data position: it was "
                f"written by an older version of wpce_jax whose data order differs; resume it with that version, "
                f"or start a new --workdir (checkpoint.load still reads it for evaluation)")
        state = self._state.restore(step_dir / "state", args=ocp.args.StandardRestore(abstract_state))
        return state, int(self._json.restore(step_dir / "position")["examples_seen"])

    def skip(self, step: int, is_main: bool) -> epath.Path:
        """Moves checkpoint `step` aside (process 0; every process then re-reads the list). Returns the new path."""
        self.manager.wait_until_finished()
        target = self.directory / f"{step}.damaged"
        if is_main:
            (self.directory / str(step)).rename(target)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils
            multihost_utils.sync_global_devices(f"skip checkpoint {step}")
        self.manager.reload()
        return target

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()
        self._state.close()


def array_shapes(tree) -> dict[str, tuple]:
    """'/'-joined path -> shape of the arrays in a tree of arrays, ShapeDtypeStructs or Orbax ArrayMetadata (empty
    nodes, such as optax's EmptyState, hold no array and are left out)."""
    flat = ocp.tree.to_flat_dict(ocp.tree.serialize_tree(tree, keep_empty_nodes=True), sep="/")
    return {path: tuple(leaf.shape) for path, leaf in flat.items() if hasattr(leaf, "shape")}


def abstract_like(tree, shardings) -> Any:
    """ShapeDtypeStructs of `tree` placed with `shardings` (one Sharding for all, or a tree of them like `tree`):
    the restore target. Orbax reads each array straight into that placement, whatever the saving run's was."""
    if isinstance(shardings, jax.sharding.Sharding):
        shardings = jax.tree.map(lambda _: shardings, tree)
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


class ParamsMismatchError(UserError, ValueError):
    """A source checkpoint's parameter has another shape than the model's (e.g. another embed_dim)."""


class SourceParams(NamedTuple):
    params: dict          # '/'-joined path -> array, for the model's parameters the source has (shapes equal)
    missing: list[str]    # paths of the model's parameters that the source lacks
    unused: list[str]     # paths of the source's parameters that the model lacks
    step: int


def _flat_params(tree) -> dict:
    from wpce_jax.optimizer import param_path
    return {param_path(path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def restore_params(workdir, step: Optional[int], abstract_params) -> SourceParams:
    """The parameters of a run's checkpoint (the latest, or `step`), read alone (no optimiser state) into the
    placement of `abstract_params` (a tree of ShapeDtypeStructs, e.g. the model's, with shardings).

    Only the parameters both sides have are read; the others are listed. A shape that differs raises
    ParamsMismatchError naming every such parameter (path, source shape, model shape) before anything is read."""
    directory = checkpoint_dir(workdir)
    if not directory.is_dir():
        raise MissingInputError(f"no checkpoints under {directory}: is {workdir!r} a training or imported workdir?")
    manager = read_only_manager(directory)
    try:
        steps = sorted(manager.all_steps())
    finally:
        manager.close()
    if step is None and steps:
        step = steps[-1]
    if step not in steps:
        raise MissingInputError(f"{directory} has no step-{step} checkpoint; it has steps {steps}"
                                if steps else f"{directory} holds no complete checkpoint")
    item = directory / str(step) / "state"
    handler = ocp.PyTreeCheckpointHandler()
    source = _flat_params(handler.metadata(item).tree["params"])
    model = _flat_params(abstract_params)
    wrong = [f"{p}: source {tuple(source[p].shape)}, model {tuple(x.shape)}" for p, x in model.items()
             if p in source and tuple(source[p].shape) != tuple(x.shape)]
    if wrong:
        raise ParamsMismatchError(f"the parameters of {item} do not fit the model (another size: check model.* "
                                  f"against the source's config.json):\n  " + "\n  ".join(wrong))
    shared = {p: x for p, x in model.items() if p in source}
    nested: dict = {}
    for p, x in shared.items():
        node = nested
        *parents, leaf = p.split("/")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = x
    target = {"params": nested}
    restored = handler.restore(item, args=ocp.args.PyTreeRestore(
        item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target), partial_restore=True))
    handler.close()
    return SourceParams(_flat_params(restored["params"]), sorted(set(model) - set(source)),
                        sorted(set(source) - set(model)), step)


def read_only_manager(directory) -> ocp.CheckpointManager:
    """A CheckpointManager for reading: it creates, cleans and deletes nothing (none of its options does, and it is
    never asked to save). Not Orbax's read_only option, which logs a warning on every use."""
    return ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(
        create=False, cleanup_tmp_directories=False, max_to_keep=None))


# The notebook API lives in wpce_jax/inference.py; these names stay here for code written against them.
def load(path, step: Optional[int] = None, devices=None):
    """`wpce_jax.inference.load`: a run's checkpoint as a LoadedModel (notebooks, inference)."""
    from wpce_jax import inference
    return inference.load(path, step, devices)


def restore(path, step: Optional[int] = None, devices=None, data_parallel: bool = True):
    """`wpce_jax.inference.restore`: what evaluation reads of a run's checkpoint, placed on the devices present."""
    from wpce_jax import inference
    return inference.restore(path, step, devices, data_parallel)
