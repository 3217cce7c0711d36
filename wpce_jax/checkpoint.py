"""Orbax checkpoints of a run, and `load(workdir)` for notebooks and evaluation.

A checkpoint DIR/checkpoints/<step>/ holds three items:
    state   the TrainState: parameters, optimiser state, step, root RNG key, non-finite marker, evaluation RFF draw;
    data    the grain iterator's state, one JSON file per process (so a resumed run reads the same next batches);
    config  the run's config as JSON (the tokenizer path in it points at the copy under DIR/tokenizer/).
Saving is asynchronous; Orbax writes to a temporary directory and renames it when complete, so a run killed while
saving leaves the previous checkpoint intact.
"""
import json
import os
from typing import Any, NamedTuple, Optional

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from ml_collections import ConfigDict

CHECKPOINT_SUBDIR = "checkpoints"


def config_to_json(config: ConfigDict) -> dict:
    return json.loads(config.to_json_best_effort())


class Checkpointer:
    """The run's CheckpointManager: keeps the last `max_to_keep` checkpoints under DIR/checkpoints."""

    def __init__(self, workdir: str, max_to_keep: int, async_save: bool = True):
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, enable_async_checkpointing=async_save,
                                               create=True)
        self.manager = ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), CHECKPOINT_SUBDIR),
                                             options=options)

    def latest_step(self) -> Optional[int]:
        return self.manager.latest_step()

    def save(self, step: int, state, data_iterator, config: ConfigDict) -> None:
        self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=grain.checkpoint.CheckpointSave(data_iterator),
            config=ocp.args.JsonSave(config_to_json(config))), force=True)

    def restore(self, step: int, abstract_state, data_iterator) -> Any:
        """Restores `step` into arrays shaped and sharded like `abstract_state`, and the iterator in place."""
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state),
            data=grain.checkpoint.CheckpointRestore(data_iterator)))
        return restored["state"]

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()


def abstract_like(tree, sharding) -> Any:
    """ShapeDtypeStructs of `tree` placed with `sharding`: the restore target."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


class LoadedModel:
    """A trained model for notebooks: encoders to compared vectors and their similarity.

    encode_images: uint8 [N, H, W, 3] (any size: resized and centre-cropped as in evaluation) or already normalised
                   float [N, S, S, 3] -> [N, F].
    encode_texts:  list of N strings -> [N, F].
    similarity:    ([N, F], [K, F]) -> [N, K], the WPCE similarity estimate (cosine for the CLIP baseline),
                   without the logit scale.
    """

    def __init__(self, config: ConfigDict, model, params, eval_rff, step: int):
        from wpce_jax.data.tokenizers import get_tokenizer
        from wpce_jax.similarity import encoders

        self.config, self.params, self.eval_rff, self.step = config, params, eval_rff, step
        self.tokenizer = get_tokenizer(config.data.tokenizer, config.data.tokenizer_path,
                                       config.model.text.context_length)
        image_features, text_features = encoders(model, config)
        self._image, self._text = jax.jit(image_features), jax.jit(text_features)

    def preprocess(self, images: np.ndarray) -> np.ndarray:
        from wpce_jax.data.image_ops import eval_crop, normalize
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"images must be [N, H, W, 3], got shape {images.shape}")
        size = self.config.data.image_size
        if images.dtype == np.uint8:  # the evaluation transform: short side to `size` (bicubic), centre crop
            return normalize(np.stack([eval_crop(im, size) for im in images]))
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


class Restored(NamedTuple):
    config: ConfigDict
    model: Any
    state: Any      # the TrainState (parameters, step, root key, evaluation RFF draw, ...) on one device
    step: int


def restore(path: str, step: Optional[int] = None) -> Restored:
    """A run's checkpoint (the latest, or `step`) from its workdir, on this process's first device."""
    from wpce_jax.models.towers import make_model
    from wpce_jax.optimizer import make_optimizer
    from wpce_jax.train_step import initial_state

    directory = os.path.join(os.path.abspath(path), CHECKPOINT_SUBDIR)
    if not os.path.isdir(directory):
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
        beside = os.path.join(os.path.abspath(path), "tokenizer", os.path.basename(config.data.tokenizer_path))
        if os.path.exists(beside):
            config.data.tokenizer_path = beside
        model = make_model(config)
        abstract = jax.eval_shape(lambda: initial_state(model, make_optimizer(config), config,
                                                        jax.random.key(config.seed)))
        target = abstract_like(abstract, jax.sharding.SingleDeviceSharding(jax.local_devices()[0]))
        state = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))["state"]
    finally:
        manager.close()
    return Restored(config, model, state, step)


def load(path: str, step: Optional[int] = None) -> LoadedModel:
    """Loads a run's checkpoint (the latest, or `step`) from its workdir for inference on one device."""
    config, model, state, step = restore(path, step)
    return LoadedModel(config, model, state.params, state.eval_rff, step)
