"""Orbax checkpoints of a run, and `load(workdir)` for notebooks and evaluation.

A checkpoint DIR/checkpoints/<step>/ holds three items:
    state     the TrainState: parameters, optimiser state, step, root RNG key, non-finite marker, evaluation RFF draw;
    position  {"examples_seen": global training examples consumed, "skipped_examples": how many of them were
              stand-ins for unreadable records}: where the data stream goes on (it is addressed by global example
              index, so any worker or process count resumes it exactly);
    config    the run's resolved config as JSON (the tokenizer path in it points at the copy under DIR/tokenizer/).
DIR may be local or gs://. Saving is asynchronous; Orbax marks a checkpoint complete only when all of it is written
(a renamed temporary directory on local disks, a commit_success.txt object on gs://), so a run killed while saving
leaves the previous checkpoint intact. A damaged checkpoint is moved aside to <step>.damaged by `Checkpointer.skip`,
so that the run can go on from an earlier one (which failures count as damage: wpce_jax/restore.py).

`restore` and `load` (evaluation, notebooks) read only what evaluation uses (parameters, root key, evaluation RFF
draw), never the optimiser state, and place the parameters split over the devices present as the run split them.
"""
import json
import warnings
from typing import Any, NamedTuple, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from jax.sharding import Mesh
from ml_collections import ConfigDict

from wpce_jax.errors import MissingInputError, UserError
from wpce_jax.kernels import RFF
from wpce_jax.parallel import (FSDP_AXIS, apply_gathered, fsdp_shardings, largest_fsdp, make_mesh,
                               replicated)
from wpce_jax.paths import resolved
from wpce_jax.pointcloud import PointCloud

CHECKPOINT_SUBDIR = "checkpoints"
_ITEMS = ("state", "position", "config")  # the items of a checkpoint (module docstring)
_COMMIT = "commit_success.txt"  # Orbax writes it last, in the step and in each item (local disks and gs://)


def config_to_json(config: ConfigDict) -> dict:
    return json.loads(config.to_json_best_effort())


def checkpoint_dir(workdir) -> epath.Path:
    """DIR/checkpoints, absolute for local paths (Orbax needs that), gs:// URIs as they are."""
    return resolved(workdir) / CHECKPOINT_SUBDIR


class IncompatibleCheckpointError(UserError, ValueError):
    """A checkpoint written by an older version of the code, which this version cannot resume."""


class Checkpointer:
    """The run's CheckpointManager: keeps the last `max_to_keep` checkpoints under DIR/checkpoints."""

    def __init__(self, workdir, max_to_keep: int, async_save: bool = True):
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, enable_async_checkpointing=async_save,
                                               create=True)
        self.directory = checkpoint_dir(workdir)
        self.manager = ocp.CheckpointManager(self.directory, options=options)
        self._json, self._state = ocp.JsonCheckpointHandler(), ocp.StandardCheckpointHandler()

    def latest_step(self) -> Optional[int]:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def save(self, step: int, state, examples_seen: int, config: ConfigDict, skipped_examples: int = 0) -> None:
        self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            position=ocp.args.JsonSave({"examples_seen": int(examples_seen),
                                        "skipped_examples": int(skipped_examples)}),
            config=ocp.args.JsonSave(config_to_json(config))), force=True)

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
    manager = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(read_only=True))
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


class LoadedModel:
    """A trained model for notebooks: encoders to compared vectors and their similarity.

    encode_images: uint8 [N, H, W, 3] (any size: resized and centre-cropped as in evaluation) or already normalised
                   float [N, S, S, 3] -> [N, F].
    encode_texts:  list of N strings -> [N, F].
    similarity:    ([N, F], [K, F]) -> [N, K], the WPCE similarity estimate (cosine for the CLIP baseline),
                   without the logit scale.
    image_clouds / text_clouds: the towers' PointClouds (numpy), for looking at the point weights;
    patch_grid, token_strings: what the image and text points stand for (wpce_jax.visualize draws them).
    """

    def __init__(self, config: ConfigDict, model, params, eval_rff, step: int, mesh: Optional[Mesh] = None):
        from wpce_jax.data.tokenizers import get_tokenizer
        from wpce_jax.similarity import embed

        self.config, self.params, self.eval_rff, self.step = config, params, eval_rff, step
        self.tokenizer = get_tokenizer(config.data.tokenizer, config.data.tokenizer_path,
                                       config.model.text.context_length)
        self.model = model
        # The mesh the parameters are placed on: split over its "fsdp" axis, each weight is gathered where used.
        mesh = mesh or make_mesh(jax.local_devices()[:1])
        cloud = lambda method: lambda p, x: apply_gathered(model, mesh, p, x, method)  # noqa: E731
        self._image_cloud, self._text_cloud = jax.jit(cloud("encode_image")), jax.jit(cloud("encode_text"))
        self._image = jax.jit(lambda p, x, rff: embed(cloud("encode_image")(p, x), rff, config))
        self._text = jax.jit(lambda p, t, rff: embed(cloud("encode_text")(p, t), rff, config))

    def preprocess(self, images: np.ndarray) -> np.ndarray:
        """uint8 [N, H, W, 3] -> uint8 [N, S, S, 3] (the evaluation crop); normalised float [N, S, S, 3] -> float32."""
        from wpce_jax.data.image_ops import eval_crop
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"images must be [N, H, W, 3], got shape {images.shape}")
        size = self.config.data.image_size
        if images.dtype == np.uint8:  # the evaluation transform: short side to `size` (bicubic), centre crop;
            return np.stack([eval_crop(im, size) for im in images])  # the image tower normalises uint8 pixels
        if images.shape[1:3] != (size, size):
            raise ValueError(f"float images must be normalised [N, {size}, {size}, 3]; pass uint8 images to have "
                             f"them resized, got shape {images.shape}")
        return images.astype(np.float32)

    def encode_images(self, images) -> jax.Array:
        return self._image(self.params, self.preprocess(images), self.eval_rff)

    def encode_texts(self, texts) -> jax.Array:
        if isinstance(texts, str):
            raise ValueError("texts must be a list of strings, got one string")
        return self._text(self.params, self.tokenizer(list(texts)), self.eval_rff)

    def similarity(self, a, b) -> jax.Array:
        return jax.numpy.asarray(a) @ jax.numpy.asarray(b).T

    # ------------------------------------------------------------------ the point clouds, for visualisation

    @property
    def patch_grid(self) -> tuple[int, int]:
        """(rows, columns) of the ViT's patch grid: image point 1 + r * columns + c is patch (r, c)."""
        from wpce_jax.models.towers import _image_dims
        side = self.config.data.image_size // _image_dims(self.config)[1]
        return side, side

    def image_clouds(self, images) -> PointCloud:
        """Images (as `encode_images` takes them) -> the image tower's clouds as numpy arrays: points [N, M, d],
        weights [N, M], mask None. "wpce": M = 1 + rows * columns, point 0 the class token, then the patches in
        row-major order (see `patch_grid`); "clip": M = 1, the class token with weight 1."""
        cloud = self._image_cloud(self.params, self.preprocess(images))
        return PointCloud(np.asarray(cloud.points), np.asarray(cloud.weights), None)

    def text_clouds(self, texts) -> PointCloud:
        """List of N strings -> the text tower's clouds as numpy arrays: points [N, M, d], weights [N, M], mask
        None. "wpce": M = context_length, one point per token position (start, text, end and padding: padding
        positions are points too); "clip": M = 1, the end-of-text position with weight 1."""
        if isinstance(texts, str):
            raise ValueError("texts must be a list of strings, got one string")
        cloud = self._text_cloud(self.params, self.tokenizer(list(texts)))
        return PointCloud(np.asarray(cloud.points), np.asarray(cloud.weights), None)

    def token_strings(self, texts) -> list[list[str]]:
        """List of N strings -> for each, context_length labels, one per token position as the text tower sees
        them: "<sot>", the tokenizer's pieces (SentencePiece pieces keep their word-start mark "▁"; CLIP BPE
        symbols their "</w>"), "<eot>", then "<pad>"."""
        if isinstance(texts, str):
            raise ValueError("texts must be a list of strings, got one string")
        tok = self.tokenizer
        if hasattr(tok, "_sp"):
            piece = tok._sp.IdToPiece
        else:
            decoder = {v: k for k, v in tok.encoder.items()}
            piece = decoder.__getitem__
        out = []
        for row in self.tokenizer(list(texts)):
            end = int(np.flatnonzero(row == tok.eot_id)[0])
            out.append(["<sot>"] + [piece(int(i)) for i in row[1:end]] + ["<eot>"] + ["<pad>"] * (len(row) - end - 1))
        return out


class EvalState(NamedTuple):
    """What evaluation reads of a checkpoint's TrainState (train_step.TrainState); never the optimiser state."""
    params: Any
    rng: jax.Array           # uint32 key data of the run's root key: the extra evaluation RFF draws come from it
    eval_rff: Optional[RFF]  # the run's fixed evaluation RFF draw (None for the CLIP baseline)


class Restored(NamedTuple):
    config: ConfigDict
    model: Any
    state: EvalState  # on `mesh`: the parameters split over its "fsdp" axis (parallel.fsdp_spec), the rest replicated
    step: int
    mesh: Mesh
    summary: str      # one line: the bytes read (against the parameters' and the checkpoint's) and the placement


def _saved_fsdp(config: ConfigDict) -> int:
    return int(config.mesh.fsdp) if "mesh" in config else 1  # runs saved before FSDP existed were unsplit


def _nbytes(tree) -> int:
    return sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


def _mb(n: int) -> str:
    return f"{n / 1e6:.3g} MB"


def restore(path, step: Optional[int] = None, devices=None, data_parallel: bool = True) -> Restored:
    """What evaluation needs of a run's checkpoint (the latest, or `step`) from its workdir (local or gs://): the
    parameters, root key and evaluation RFF draw (EvalState); the optimiser state is not read.

    They are placed on a mesh of `devices` (default: every device of every process) with the run's config.mesh.fsdp
    or, when that does not divide the device count, the largest divisor of it below that (the summary says so):
    each device holds 1/fsdp of the parameters, so a model that trained split is evaluated split. One device: whole.
    data_parallel=False: only the first fsdp of `devices` (one for an unsplit run), for work too small to spread.
    """
    from wpce_jax import rng
    from wpce_jax.models.towers import init_params, make_model
    from wpce_jax.similarity import eval_rff

    directory = checkpoint_dir(path)
    if not directory.is_dir():
        raise MissingInputError(f"no checkpoints under {directory}: is {path!r} a training workdir?")
    # Read-only, with the options read_only implies already set (Orbax otherwise warns once for each it overrides).
    manager = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(
        read_only=True, save_interval_steps=0, create=False, cleanup_tmp_directories=False))
    try:
        steps = manager.all_steps()
        if step is None:
            step = manager.latest_step()
        elif step not in steps:
            raise MissingInputError(f"{directory} has no step-{step} checkpoint; it has steps {sorted(steps)}")
        if step is None:
            raise MissingInputError(f"{directory} holds no complete checkpoint")
        config = ConfigDict(manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"])
        # The run kept its tokenizer in DIR/tokenizer/; find it there even if DIR was moved or copied since.
        beside = directory.parent / "tokenizer" / epath.Path(config.data.tokenizer_path).name
        if beside.exists():
            config.data.tokenizer_path = str(beside)
        model = make_model(config)

        def eval_state():  # the same shapes as train_step.initial_state's
            root = rng.root_key(config.seed)
            return EvalState(init_params(model, rng.init_key(root), config), jax.random.key_data(root),
                             eval_rff(root, config))

        abstract = jax.eval_shape(eval_state)
        devices = jax.devices() if devices is None else list(devices)
        saved_fsdp = _saved_fsdp(config)
        present = len(devices)
        fsdp = largest_fsdp(saved_fsdp, present)
        if not data_parallel:
            devices = devices[:fsdp]
        mesh = make_mesh(devices, fsdp)
        shardings = EvalState(fsdp_shardings(abstract.params, mesh), replicated(mesh),
                              jax.tree.map(lambda _: replicated(mesh), abstract.eval_rff))
        target = abstract_like(abstract, shardings)
        # A partial restore: only these subtrees of the saved TrainState are read (the CLIP baseline has no draw).
        item = {k: v for k, v in target._asdict().items() if v is not None}
        state = manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
            item=item, restore_args=ocp.checkpoint_utils.construct_restore_args(item), partial_restore=True)))["state"]
        saved = ocp.PyTreeCheckpointHandler().metadata(directory / str(step) / "state")
    finally:
        manager.close()
    state = EvalState(state["params"], state["rng"], state.get("eval_rff"))
    placement = ("on one device" if len(devices) == 1 else f"whole on each of {len(devices)} devices" if fsdp == 1
                 else f"split over fsdp {fsdp} of {len(devices)} devices")
    if fsdp != saved_fsdp and present > 1:
        placement += f" (the run's mesh.fsdp {saved_fsdp} does not divide {present}: the largest divisor below)"
    summary = (f"restored {_mb(_nbytes(target))} (parameters {_mb(_nbytes(target.params))}; the checkpoint holds "
               f"{_mb(_nbytes(saved.tree))}), {placement}")
    return Restored(config, model, state, step, mesh, summary)


def load(path, step: Optional[int] = None, devices=None) -> LoadedModel:
    """Loads a run's checkpoint (the latest, or `step`) from its workdir (local or gs://) for inference: on one
    device, or, for a run that split its parameters over config.mesh.fsdp devices, split over that many of this
    process's devices (or of `devices`); no optimiser state (`restore`)."""
    devices = jax.local_devices() if devices is None else devices
    restored = restore(path, step, devices, data_parallel=False)
    if restored.mesh.shape[FSDP_AXIS] != _saved_fsdp(restored.config) and restored.mesh.size > 1:
        warnings.warn(restored.summary)
    return LoadedModel(restored.config, restored.model, restored.state.params, restored.state.eval_rff,
                       restored.step, restored.mesh)
