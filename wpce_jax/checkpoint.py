"""Orbax checkpoints of a run, and `load(workdir)` for notebooks and evaluation.

A checkpoint DIR/checkpoints/<step>/ holds three items:
    state     the TrainState: parameters, optimiser state, step, root RNG key, non-finite marker, evaluation RFF draw;
    position  {"examples_seen": global training examples consumed}: where the data stream goes on (it is
              addressed by global example index, so any worker or process count resumes it exactly);
    config    the run's resolved config as JSON (the tokenizer path in it points at the copy under DIR/tokenizer/).
DIR may be local or gs://. Saving is asynchronous; Orbax marks a checkpoint complete only when all of it is written
(a renamed temporary directory on local disks, a commit_success.txt object on gs://), so a run killed while saving
leaves the previous checkpoint intact. A checkpoint that does not restore
(damaged files) is moved aside to <step>.damaged by `Checkpointer.skip`, so that the run can go on from an earlier
one.
"""
import json
from typing import Any, NamedTuple, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from ml_collections import ConfigDict

from wpce_jax.paths import resolved
from wpce_jax.pointcloud import PointCloud

CHECKPOINT_SUBDIR = "checkpoints"


def config_to_json(config: ConfigDict) -> dict:
    return json.loads(config.to_json_best_effort())


def checkpoint_dir(workdir) -> epath.Path:
    """DIR/checkpoints, absolute for local paths (Orbax needs that), gs:// URIs as they are."""
    return resolved(workdir) / CHECKPOINT_SUBDIR


class IncompatibleCheckpointError(ValueError):
    """A checkpoint written by an older version of the code, which this version cannot resume."""


class Checkpointer:
    """The run's CheckpointManager: keeps the last `max_to_keep` checkpoints under DIR/checkpoints."""

    def __init__(self, workdir, max_to_keep: int, async_save: bool = True):
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, enable_async_checkpointing=async_save,
                                               create=True)
        self.directory = checkpoint_dir(workdir)
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> Optional[int]:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def save(self, step: int, state, examples_seen: int, config: ConfigDict) -> None:
        self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            position=ocp.args.JsonSave({"examples_seen": int(examples_seen)}),
            config=ocp.args.JsonSave(config_to_json(config))), force=True)

    def saved_config(self, step: int) -> dict:
        """The config a checkpoint was written with (plain dict)."""
        return self.manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]

    def restore(self, step: int, abstract_state) -> tuple[Any, int]:
        """(state shaped and sharded like `abstract_state`, global examples consumed) of checkpoint `step`."""
        if not (self.directory / str(step) / "position").exists() and (self.directory / str(step) / "data").exists():
            raise IncompatibleCheckpointError(
                f"{self.directory / str(step)} holds a data-iterator state instead of a data position: it was "
                f"written by an older version of wpce_jax whose data order differs; resume it with that version, "
                f"or start a new --workdir (checkpoint.load still reads it for evaluation)")
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), position=ocp.args.JsonRestore()))
        return restored["state"], int(restored["position"]["examples_seen"])

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


def abstract_like(tree, shardings) -> Any:
    """ShapeDtypeStructs of `tree` placed with `shardings` (one Sharding for all, or a tree of them like `tree`):
    the restore target. Orbax reads each array straight into that placement, whatever the saving run's was."""
    if isinstance(shardings, jax.sharding.Sharding):
        shardings = jax.tree.map(lambda _: shardings, tree)
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


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

    def __init__(self, config: ConfigDict, model, params, eval_rff, step: int):
        from wpce_jax.data.tokenizers import get_tokenizer
        from wpce_jax.similarity import encoders

        self.config, self.params, self.eval_rff, self.step = config, params, eval_rff, step
        self.tokenizer = get_tokenizer(config.data.tokenizer, config.data.tokenizer_path,
                                       config.model.text.context_length)
        image_features, text_features = encoders(model, config)
        self._image, self._text = jax.jit(image_features), jax.jit(text_features)
        self.model = model
        self._image_cloud = jax.jit(lambda p, x: model.apply({"params": p}, x, method="encode_image"))
        self._text_cloud = jax.jit(lambda p, t: model.apply({"params": p}, t, method="encode_text"))

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


class Restored(NamedTuple):
    config: ConfigDict
    model: Any
    state: Any      # the TrainState (parameters, step, root key, evaluation RFF draw, ...) on one device
    step: int


def restore(path, step: Optional[int] = None) -> Restored:
    """A run's checkpoint (the latest, or `step`) from its workdir (local or gs://), on this process's first
    device."""
    from wpce_jax import rng
    from wpce_jax.models.towers import cudnn_attention_unavailable, make_model
    from wpce_jax.optimizer import make_optimizer
    from wpce_jax.train_step import initial_state

    directory = checkpoint_dir(path)
    if not directory.is_dir():
        raise FileNotFoundError(f"no checkpoints under {directory}: is {path!r} a training workdir?")
    manager = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(read_only=True))
    try:
        steps = manager.all_steps()
        if step is None:
            step = manager.latest_step()
        elif step not in steps:
            raise FileNotFoundError(f"{directory} has no step-{step} checkpoint; it has steps {sorted(steps)}")
        if step is None:
            raise FileNotFoundError(f"{directory} holds no complete checkpoint")
        config = ConfigDict(manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"])
        # The run kept its tokenizer in DIR/tokenizer/; find it there even if DIR was moved or copied since.
        beside = directory.parent / "tokenizer" / epath.Path(config.data.tokenizer_path).name
        if beside.exists():
            config.data.tokenizer_path = str(beside)
        # The attention implementation is how, not what (no parameters): a cuDNN run's checkpoint loads anywhere.
        if config.get("model", {}).get("attention") == "cudnn" and cudnn_attention_unavailable(config):
            config.model.attention = "auto"
        model = make_model(config)
        abstract = jax.eval_shape(lambda: initial_state(model, make_optimizer(config), config,
                                                        rng.root_key(config.seed)))
        target = abstract_like(abstract, jax.sharding.SingleDeviceSharding(jax.local_devices()[0]))
        state = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))["state"]
    finally:
        manager.close()
    return Restored(config, model, state, step)


def load(path, step: Optional[int] = None) -> LoadedModel:
    """Loads a run's checkpoint (the latest, or `step`) from its workdir (local or gs://) for inference on one
    device."""
    config, model, state, step = restore(path, step)
    return LoadedModel(config, model, state.params, state.eval_rff, step)
