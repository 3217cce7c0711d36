"""Evaluates a run's checkpoint: python -m wpce_jax.evaluate --workdir=DIR [--step=N] [--config.KEY=VALUE ...]

Restores the checkpoint's parameters and evaluation RFF draw (the latest by default; never the optimiser state),
split over the devices as the run split them (config.mesh.fsdp), with the config the run saved, applies the
--config.KEY=VALUE overrides (ml_collections parses them as for `python -m wpce_jax.main`, each as its field's type; a
field the saved config holds as None takes a Python literal, or else the text), runs the evaluations it names
(eval.zeroshot, eval.linear_probe, eval.retrieval; dataset specs as in wpce_jax/evaluate/registry.py), prints a
table, and writes DIR/eval/step_<N>.json. For example, add sets the run did not name:

    python -m wpce_jax.evaluate --workdir=runs/b16 --config.eval.tfds_data_dir=/data/tfds \\
        --config.eval.zeroshot=cifar10,imagenet,aircraft=folder:/data/fgvc --config.eval.rff_draws=5

Only evaluation fields (eval.*) and data.worker_count / data.cache_dir may change: the rest describes the trained
model (an override that changes another field is an error naming it). Multi-host: the same flags as training
(--distributed, or --coordinator_address, --num_processes, --process_id); each process reads its part of the data
and every process computes the same numbers.
"""
if __name__ == "__main__":  # first: glibc reads its tunables only at process start (huge_pages.py)
    from wpce_jax.huge_pages import reexec_with_huge_pages
    reexec_with_huge_pages()

import re
import sys

from absl import app, flags
from ml_collections import FieldReference, config_flags

from wpce_jax import distributed
from wpce_jax.errors import ConfigError
from wpce_jax.cli import fail, one_line, parse_flags, quiet_libraries, report_errors

flags.DEFINE_string("workdir", None, "A training run's directory (holds checkpoints/).", required=True)
flags.DEFINE_integer("step", None, "Checkpoint step to evaluate (default: the latest).")
FLAGS = flags.FLAGS

OVERRIDABLE = ("eval.", "data.worker_count", "data.cache_dir")
_OVERRIDE = re.compile(r"--?(?:no)?config\.([^=]+)")  # how ml_collections finds the --config.KEY arguments


def parse_known_flags(argv: list[str]) -> list[str]:
    """The flags app.run parses before `main`: all but --config.KEY, which ml_collections parses against the
    checkpoint's config once `main` has read it. Returns the program name and the arguments left for `main`."""
    rest = parse_flags(argv, known_only=True)
    flags_part = rest[1:rest.index("--")] if "--" in rest else rest[1:]
    unknown = [arg for arg in flags_part if arg.startswith("-") and not _OVERRIDE.match(arg)]
    if unknown:
        parse_flags([rest[0], *unknown])  # absl's own one-line error for an unknown flag
    return rest


def _as_defined(node) -> None:
    """Undoes, in place, what saving the config as JSON did to its types, so that ml_collections parses a
    --config.KEY as for `python -m wpce_jax.main`: tuples became lists (back to tuples), and typed placeholders
    became None (their type is not saved: a placeholder that takes a Python literal, or else the text)."""
    for key, value in list(node.items()):
        if hasattr(value, "items"):
            _as_defined(value)
        elif isinstance(value, list):
            del node[key]  # assigning a tuple to a list field would keep the list
            node[key] = tuple(value)
        elif value is None:
            node[key] = FieldReference(None, field_type=object)


def _has_field(config, key: str) -> bool:
    node = config
    for part in key.split("."):
        if not hasattr(node, "items") or part not in node:
            return False
        node = node[part]
    return True


def apply_config_flags(config, argv: list[str]) -> tuple[list[str], list[str]]:
    """Parses the --config.KEY=VALUE arguments of `argv` into `config` (the checkpoint's; changed in place, then
    locked) with ml_collections' machinery, as wpce_jax.main parses them against a config file. Returns (the
    arguments left: the program name and any positional argument, the lines saying what changed). ConfigError for a
    field the config lacks, a value of the wrong type, or a changed field that only training may set."""
    from wpce_jax.checkpoint import config_to_json
    from wpce_jax.run_record import flatten

    saved = flatten(config_to_json(config))
    with config.unlocked():
        _as_defined(config)
    for name in [n for n in FLAGS if n == "config" or n.startswith("config.")]:  # an earlier call's (tests)
        delattr(FLAGS, name)
    try:
        config_flags.DEFINE_config_dict("config", config, "The run's config (from its checkpoint).",
                                        lock_config=True, sys_argv=argv)
        rest = FLAGS(argv)
    except (KeyError, AttributeError) as e:  # ml_collections' error for a field the config lacks
        missing = [m[1] for m in map(_OVERRIDE.match, argv) if m and not _has_field(config, m[1])]
        raise ConfigError(", ".join(f"--config.{key}" for key in missing) + ": no such field in the run's config"
                          if missing else f"a --config.KEY=VALUE names no field of the run's config: {one_line(e)}")
    except Exception as e:  # noqa: BLE001 - absl and ml_collections raise several kinds
        raise ConfigError(one_line(e)) from None
    now = flatten(config_to_json(config))
    changed = [key for key in now if now[key] != saved.get(key)]
    forbidden = [key for key in changed if not key.startswith(OVERRIDABLE)]
    if forbidden:
        raise ConfigError(f"{', '.join(f'--config.{key}' for key in forbidden)}: only {', '.join(OVERRIDABLE)} "
                          f"fields can change when evaluating a trained model")
    return rest, [f"{key} = {now[key]!r}" for key in changed]


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
def main(argv):
    """argv: the program name and the --config.KEY=VALUE arguments (parse_known_flags parsed the other flags)."""
    quiet_libraries()
    import jax

    distributed.initialize()
    from wpce_jax.config_validation import mode_settings
    from wpce_jax.inference import restore
    from wpce_jax.data.tokenizers import get_tokenizer
    from wpce_jax.evaluate.evaluator import Evaluator, validate_eval_config
    from wpce_jax.metric_writer import write_eval_json

    is_main = jax.process_index() == 0
    config, model, state, step, mesh, summary = restore(FLAGS.workdir, FLAGS.step)
    rest, changes = apply_config_flags(with_eval_defaults(config), argv)
    if len(rest) > 1:
        raise app.UsageError(f"unexpected arguments: {rest[1:]}")
    validate_eval_config(config)
    if is_main:
        print(f"evaluating the step-{step} checkpoint of {FLAGS.workdir}"
              + (f" with {'; '.join(changes)}" if changes else ""), flush=True)
        print(summary, flush=True)
    tokenizer = get_tokenizer(config.data.tokenizer, config.data.tokenizer_path, config.model.text.context_length)
    cache = f"{FLAGS.workdir}/eval/features/step_{step}" if config.eval.cache_features else None
    evaluator = Evaluator(model, config, mesh, tokenizer, mode_settings(config).relevance, cache_dir=cache,
                          training=False, verbose=True)
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
    app.run(main, flags_parser=parse_known_flags)
