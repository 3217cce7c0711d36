"""Weights published elsewhere -> a workdir this project evaluates, loads and fine-tunes from.

    python -m wpce_jax.import_checkpoint --format=wpse|open_clip|hf_clip --input=PATH --workdir=DIR \\
        --tokenizer=bpe_simple_vocab_16e6.txt.gz [--as_wpce [--kernel=gaussian --kernel_scale=0.5]]

DIR receives what a training run leaves: a step-0 checkpoint under DIR/checkpoints/0 (a whole TrainState: the
imported parameters, a fresh optimiser state, the evaluation RFF draw; so that every reader of training
checkpoints reads it), the tokenizer under DIR/tokenizer/, and DIR/config.json, the run record, whose "imported"
entry names the source (format, files, sha256). `wpce_jax.checkpoint.load(DIR)`, `python -m wpce_jax.evaluate
--workdir=DIR` and `config.init_from=DIR` accept it.

The imported config is a faithful copy: float32, and the source's activations, norms, pooling and pixel statistics
(wpce_jax/weights/*.py say which), so that its outputs equal the publisher's code.
--as_wpce (CLIP sources): a WPCE model whose towers are CLIP's (weights/imported.py:as_wpce); its kernel is the
config's default (Gaussian, sigma 0.5, D = 1024) unless --kernel / --kernel_scale say otherwise.
"""
import hashlib
import sys
import time

from absl import app, flags
from etils import epath

from wpce_jax import config_fields
from wpce_jax.cli import fail, one_line, parse_flags, quiet_libraries, report_errors
from wpce_jax.errors import UserError

FORMATS = ("wpse", "open_clip", "hf_clip")
FLAGS = flags.FLAGS


def _sha256(path: epath.Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def _reader(fmt: str):
    from wpce_jax.weights import hf_clip, open_clip, wpse
    return {"wpse": wpse.read, "open_clip": open_clip.read, "hf_clip": hf_clip.read}[fmt]


def build_config(fields: dict, tokenizer_copy: str, eot_id: int):
    """configs/common.py's base config with the imported fields, the clip_bpe tokenizer and float32."""
    import importlib.util
    import pathlib
    # configs/ is not installed with wpce_jax: load its common.py (which imports no other config) from beside the
    # source tree by path, whatever the working directory.
    path = pathlib.Path(__file__).resolve().parents[1] / "configs" / "common.py"
    spec = importlib.util.spec_from_file_location("wpce_jax_configs_common", path)
    common = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(common)
    config = common.base()
    for path, value in fields.items():
        config_fields.set_field(config, path, value, ignore_type=True)
    config.data.tokenizer, config.data.tokenizer_path = "clip_bpe", tokenizer_copy
    config.model.text.eot_id = eot_id
    config.model.dtype = "float32"
    return config


def _check_tree(params, abstract, source: str) -> None:
    """The imported tree must be the one make_model builds: same paths, same shapes."""
    import jax
    got = {jax.tree_util.keystr(p): tuple(x.shape) for p, x in jax.tree_util.tree_leaves_with_path(params)}
    want = {jax.tree_util.keystr(p): tuple(x.shape) for p, x in jax.tree_util.tree_leaves_with_path(abstract)}
    wrong = [f"{k}: {got.get(k, 'missing')} vs model {want.get(k, 'absent')}"
             for k in sorted(set(got) | set(want)) if got.get(k) != want.get(k)]
    if wrong:  # a mapping that disagrees with the model it configured: a defect here, not in the user's file
        raise AssertionError(f"{source}: the imported parameters do not fit the configured model: " + "; ".join(wrong))


def import_checkpoint(fmt: str, input_path, workdir, tokenizer=None, as_wpce: bool = False, kernel=None,
                      kernel_scale=None, log=print) -> epath.Path:
    """Writes the workdir (see the module docstring); returns DIR. UserError on any problem with the inputs."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from wpce_jax import rng, run_record
    from wpce_jax.checkpoint import Checkpointer, checkpoint_dir
    from wpce_jax.data.run_data import _copy_tokenizer
    from wpce_jax.data.tokenizers import get_tokenizer
    from wpce_jax.models.model_config import init_params, make_model
    from wpce_jax.optimizer import make_optimizer
    from wpce_jax.platform import describe
    from wpce_jax.similarity import eval_rff
    from wpce_jax.train_step import TrainState
    from wpce_jax.weights.imported import as_wpce as to_wpce

    if fmt not in FORMATS:
        raise UserError(f"--format={fmt!r}: expected one of {', '.join(FORMATS)}")
    if not tokenizer:
        raise UserError("--tokenizer is required: the path of CLIP's BPE vocabulary, bpe_simple_vocab_16e6.txt.gz "
                        "(the imported models read CLIP BPE token ids)")
    workdir = epath.Path(workdir)
    if checkpoint_dir(workdir).exists() and any(checkpoint_dir(workdir).iterdir()):
        raise UserError(f"--workdir {workdir} already holds checkpoints; import into a new directory")
    start = time.perf_counter()
    log(f"reading {fmt} weights from {input_path}")
    imported = _reader(fmt)(input_path)
    count = sum(np.size(x) for x in jax.tree.leaves(imported.params))
    log(f"read {count / 1e6:.1f}M parameters in {time.perf_counter() - start:.1f}s")
    if as_wpce:
        imported = to_wpce(imported)
        if kernel is not None:
            imported.fields["wpce.kernel"] = kernel
        if kernel_scale is not None:
            imported.fields["wpce.scale"] = float(kernel_scale)
    elif kernel is not None or kernel_scale is not None:
        raise UserError("--kernel and --kernel_scale apply with --as_wpce only (a WPCE release brings its kernel)")

    tokenizer_path = epath.Path(tokenizer)
    context = imported.fields["model.text.context_length"]
    try:
        tok = get_tokenizer("clip_bpe", str(tokenizer_path), context)
    except (ValueError, FileNotFoundError) as e:
        raise UserError(f"--tokenizer {tokenizer}: {one_line(e)}") from e
    if tok.vocab_size != imported.fields["model.text.vocab_size"]:
        raise UserError(f"--tokenizer {tokenizer} has {tok.vocab_size} token ids but the model's text embedding "
                        f"has {imported.fields['model.text.vocab_size']}: give the tokenizer the model was trained "
                        f"with (CLIP's bpe_simple_vocab_16e6.txt.gz)")
    copy = workdir / "tokenizer" / tokenizer_path.name
    config = build_config(imported.fields, str(copy), tok.eot_id)
    try:
        model = make_model(config)
    except ValueError as e:
        raise UserError(f"{imported.sources[0]}: the weights describe a model this project cannot build: "
                        f"{one_line(e)}") from e
    root = rng.root_key(config.seed)
    abstract = jax.eval_shape(lambda: init_params(model, rng.init_key(root), config))
    _check_tree(imported.params, abstract, str(imported.sources[0]))
    params = jax.tree.map(jnp.asarray, imported.params)
    tx = make_optimizer(config)
    state = TrainState(params=params, opt_state=tx.init(params), step=jnp.zeros((), jnp.int32),
                       rng=jax.random.key_data(root), bad_step=jnp.full((), -1, jnp.int32),
                       eval_rff=eval_rff(root, config))

    write_start = time.perf_counter()
    _copy_tokenizer(tokenizer_path, copy)
    checkpointer = Checkpointer(workdir, max_to_keep=1, async_save=False)
    checkpointer.save(0, state, 0, config)
    checkpointer.wait()
    checkpointer.close()
    sources = [{"file": str(p), "sha256": _sha256(p)} for p in imported.sources]
    run_record.write(workdir, config, describe(),
                     extra={"imported": {"format": fmt, "as_wpce": bool(as_wpce), "sources": sources}})
    log(f"wrote the step-0 checkpoint of a {config.model.similarity} model to {workdir} in "
        f"{time.perf_counter() - write_start:.1f}s ({time.perf_counter() - start:.1f}s in all)")
    return workdir


@report_errors
def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    quiet_libraries()
    for name in ("format", "input", "workdir"):
        if FLAGS[name].value is None:
            fail(f"--{name} is required (python -m wpce_jax.import_checkpoint --format={'|'.join(FORMATS)} "
                 f"--input=PATH --workdir=DIR --tokenizer=bpe_simple_vocab_16e6.txt.gz)")
    import_checkpoint(FLAGS.format, FLAGS.input, FLAGS.workdir, FLAGS.tokenizer, FLAGS.as_wpce, FLAGS.kernel,
                      FLAGS.kernel_scale)


def define_flags() -> None:
    """The command line's flags: defined only when run as a command, so that importing the importer (tests, other
    tools) leaves absl's global flags alone (python -m wpce_jax.evaluate defines its own --workdir)."""
    flags.DEFINE_enum("format", None, FORMATS, "What --input is: the paper's release directory (wpse), an OpenAI / "
                      "open_clip state dict (open_clip), or a transformers CLIPModel directory (hf_clip).")
    flags.DEFINE_string("input", None, "The weights: a file or directory (see --format).")
    flags.DEFINE_string("workdir", None, "The workdir to write (must not hold checkpoints yet).")
    flags.DEFINE_string("tokenizer", None, "CLIP's BPE vocabulary, bpe_simple_vocab_16e6.txt.gz (copied into DIR).")
    flags.DEFINE_bool("as_wpce", False, "CLIP sources: import as a WPCE model whose towers are CLIP's.")
    flags.DEFINE_string("kernel", None, "--as_wpce: the shift-invariant kernel (default: the config's, gaussian).")
    flags.DEFINE_float("kernel_scale", None, "--as_wpce: sigma or c of --kernel (default: the config's, 0.5).")


if __name__ == "__main__":
    define_flags()
    app.run(main, argv=sys.argv, flags_parser=parse_flags)
