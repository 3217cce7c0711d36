"""Evaluates a run's checkpoint: python -m wpce_jax.evaluate --workdir=DIR [--step=N] [--config.KEY=VALUE ...]

Restores the checkpoint's parameters and evaluation RFF draw (the latest by default; never the optimiser state),
split over the devices as the run split them (config.mesh.fsdp), with the config the run saved, applies the
overrides, runs the evaluations it names (eval.zeroshot, eval.linear_probe, eval.retrieval; dataset specs as in
wpce_jax/evaluate/registry.py), prints a table, and writes DIR/eval/step_<N>.json. For example, add sets the run
did not name:

    python -m wpce_jax.evaluate --workdir=runs/b16 --config.eval.tfds_data_dir=/data/tfds \\
        --config.eval.zeroshot=cifar10,imagenet,aircraft=folder:/data/fgvc --config.eval.rff_draws=5

Only evaluation fields (eval.*) and data.worker_count / data.cache_dir may be overridden: the rest describes the
trained model. Multi-host: the same flags as training (--distributed, or --coordinator_address, --num_processes,
--process_id); each process reads its part of the data and every process computes the same numbers.
"""
if __name__ == "__main__":  # first: glibc reads its tunables only at process start (huge_pages.py)
    from wpce_jax.huge_pages import reexec_with_huge_pages
    reexec_with_huge_pages()

import ast
import sys

from absl import app, flags

from wpce_jax import distributed
from wpce_jax.errors import ConfigError
from wpce_jax.cli import fail, parse_flags, quiet_libraries, report_errors

flags.DEFINE_string("workdir", None, "A training run's directory (holds checkpoints/).", required=True)
flags.DEFINE_integer("step", None, "Checkpoint step to evaluate (default: the latest).")
FLAGS = flags.FLAGS

OVERRIDABLE = ("eval.", "data.worker_count", "data.cache_dir")


def split_overrides(argv: list[str]) -> tuple[list[str], dict[str, str]]:
    """(the other arguments, {"eval.rff_draws": "5", ...}) from --config.KEY=VALUE arguments."""
    rest, overrides = [], {}
    for arg in argv:
        if arg.startswith("--config."):
            key, sep, value = arg[len("--config."):].partition("=")
            if not sep:
                raise app.UsageError(f"{arg}: expected --config.KEY=VALUE")
            overrides[key] = value
        else:
            rest.append(arg)
    return rest, overrides


def _parse(text: str, old):
    """`text` as the type of the field's current value (a literal when the field is unset)."""
    if isinstance(old, bool):
        if text.lower() not in ("true", "false", "1", "0"):
            raise ValueError(f"expected a bool, got {text!r}")
        return text.lower() in ("true", "1")
    if isinstance(old, str):
        return text
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        value = text
    if isinstance(old, int) and (isinstance(value, bool) or not isinstance(value, int)):
        raise ValueError(f"expected an int, got {text!r}")
    if isinstance(old, float) and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise ValueError(f"expected a number, got {text!r}")
    return float(value) if isinstance(old, float) else value


def apply_overrides(config, overrides: dict[str, str]) -> list[str]:
    """Sets each KEY=VALUE in `config`; returns the lines saying what changed. ValueError for a key that does
    not exist or may not change."""
    changes = []
    for key, text in overrides.items():
        if not key.startswith(OVERRIDABLE):
            raise ConfigError(f"--config.{key}: only {', '.join(OVERRIDABLE)} fields can change when evaluating a "
                              f"trained model")
        *parents, leaf = key.split(".")
        node = config
        for p in parents:
            node = node.get(p) if hasattr(node, "get") else None
        if node is None or leaf not in node:
            raise ConfigError(f"--config.{key}: no such field in the run's config")
        try:
            value = _parse(text, node[leaf])
        except ValueError as e:
            raise ConfigError(f"--config.{key}: {e}") from None
        with config.unlocked():
            node[leaf] = value
        changes.append(f"{key} = {value!r}")
    return changes


# Evaluation fields of checkpoints saved before they existed (their eval.zeroshot was a dict of directories).
EVAL_DEFAULTS = {"zeroshot": "", "linear_probe": "", "retrieval": "", "image_retrieval": "",
                 "image_retrieval_by": "similarity", "tfds_data_dir": None,
                 "aircraft_dir": None, "flickr30k_dir": None, "rff_draws": 1, "probe_features": "pooled",
                 "linear_probe_in_training": True, "cache_features": True}


def with_eval_defaults(config):
    """`config` with any missing evaluation field at its default, so that older checkpoints can be evaluated."""
    with config.unlocked():
        for key, value in EVAL_DEFAULTS.items():
            if key not in config.eval or (key == "zeroshot" and not isinstance(config.eval[key], str)):
                config.eval[key] = value
    return config


def _cell(value, width: int) -> str:
    if value is None:
        return " " * width
    if isinstance(value, int):  # a count, e.g. image_retrieval/<set>/queries_without_match
        return f"{value:>{width}d}"
    return f"{value:>{width}.4f}" if 0 <= value <= 1 else f"{value:>{width}.4g}"  # rates, or e.g. a probe's C


def format_table(results: dict[str, float]) -> str:
    """One table per task: rows are datasets, columns that task's metrics."""
    tables: dict[str, dict[str, dict[str, float]]] = {}
    for name, value in results.items():
        task, dataset, metric = name.split("/", 2)
        tables.setdefault(task, {}).setdefault(dataset, {})[metric] = value
    lines = []
    for task, rows in tables.items():
        columns = sorted({m for r in rows.values() for m in r})
        width = max(len(r) for r in list(rows) + [task])
        sizes = [max(len(c), 8) for c in columns]
        lines.append(f"{task:<{width}}  " + "  ".join(f"{c:>{n}}" for c, n in zip(columns, sizes)))
        for dataset, values in rows.items():
            lines.append(f"{dataset:<{width}}  " + "  ".join(
                _cell(values.get(c), n) for c, n in zip(columns, sizes)))
        lines.append("")
    return "\n".join(lines).rstrip()


@report_errors
def main(argv, overrides):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    quiet_libraries()
    import jax

    distributed.initialize()
    from wpce_jax.inference import restore
    from wpce_jax.data.tokenizers import get_tokenizer
    from wpce_jax.evaluate.evaluator import Evaluator, validate_eval_config
    from wpce_jax.metric_writer import write_eval_json

    is_main = jax.process_index() == 0
    config, model, state, step, mesh, summary = restore(FLAGS.workdir, FLAGS.step)
    changes = apply_overrides(with_eval_defaults(config), overrides)
    validate_eval_config(config)
    if is_main:
        print(f"evaluating the step-{step} checkpoint of {FLAGS.workdir}"
              + (f" with {'; '.join(changes)}" if changes else ""), flush=True)
        print(summary, flush=True)
    tokenizer = get_tokenizer(config.data.tokenizer, config.data.tokenizer_path, config.model.text.context_length)
    cache = f"{FLAGS.workdir}/eval/features/step_{step}" if config.eval.cache_features else None
    evaluator = Evaluator(model, config, mesh, tokenizer, cache_dir=cache, training=False, verbose=True)
    if not evaluator:
        fail("the config names no evaluation: set --config.eval.zeroshot, --config.eval.linear_probe, "
             "--config.eval.retrieval or --config.eval.image_retrieval")
    results = evaluator(state.params, state.rng, state.eval_rff)
    if not results:
        if is_main:
            print("no evaluation ran (every dataset was skipped)", flush=True)
        sys.exit(1)
    path = write_eval_json(FLAGS.workdir, step, results, enabled=is_main)
    if is_main:
        print(format_table(results), flush=True)
        print(f"wrote {path}", flush=True)


if __name__ == "__main__":
    remaining, config_overrides = split_overrides(sys.argv)
    app.run(lambda argv: main(argv, config_overrides), argv=remaining, flags_parser=parse_flags)
