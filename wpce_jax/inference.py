"""A run's checkpoint for evaluation and notebooks: `restore` (what evaluation reads: parameters, root key and the
evaluation RFF draw, never the optimiser state, placed split over the devices present as the run split them) and
`load` (a LoadedModel: encoders to compared vectors, their similarity, the point clouds for visualisation).

`wpce_jax.checkpoint.load` and `wpce_jax.checkpoint.restore` are these same functions.
"""
import warnings
from typing import Any, NamedTuple, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from jax.sharding import Mesh
from ml_collections import ConfigDict

from wpce_jax.checkpoint import abstract_like, checkpoint_dir, read_only_manager
from wpce_jax.errors import MissingInputError
from wpce_jax.kernels import RFF
from wpce_jax.parallel import FSDP_AXIS, apply_gathered, fsdp_shardings, largest_fsdp, make_mesh, replicated
from wpce_jax.pointcloud import PointCloud


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
        from wpce_jax.similarity import compared

        self.config, self.params, self.eval_rff, self.step = config, params, eval_rff, step
        self.tokenizer = get_tokenizer(config.data.tokenizer, config.data.tokenizer_path,
                                       config.model.text.context_length)
        self.model = model
        # The mesh the parameters are placed on: split over its "fsdp" axis, each weight is gathered where used.
        mesh = mesh or make_mesh(jax.local_devices()[:1])
        cloud = lambda method: lambda p, x: apply_gathered(model, mesh, p, x, method)  # noqa: E731
        self._image_cloud, self._text_cloud = jax.jit(cloud("encode_image")), jax.jit(cloud("encode_text"))
        self._image = jax.jit(lambda p, x, rff: compared(model, config, p, images=x, rff=rff, mesh=mesh).image)
        self._text = jax.jit(lambda p, t, rff: compared(model, config, p, tokens=t, rff=rff, mesh=mesh).text)

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
        from wpce_jax.models.model_config import _image_dims
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
        out = []
        for row in tok(list(texts)):
            end = int(np.flatnonzero(row == tok.eot_id)[0])
            out.append(["<sot>"] + [tok.piece(i) for i in row[1:end]] + ["<eot>"] + ["<pad>"] * (len(row) - end - 1))
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
    from wpce_jax.models.model_config import cudnn_attention_unavailable, init_params, make_model
    from wpce_jax.similarity import eval_rff

    directory = checkpoint_dir(path)
    if not directory.is_dir():
        raise MissingInputError(f"no checkpoints under {directory}: is {path!r} a training workdir?")
    manager = read_only_manager(directory)
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
        # The attention implementation is how, not what (no parameters): a cuDNN run's checkpoint loads anywhere.
        if config.get("model", {}).get("attention") == "cudnn" and cudnn_attention_unavailable(config):
            config.model.attention = "auto"
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
