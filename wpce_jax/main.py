"""Entry point: python -m wpce_jax.main --config=configs/NAME.py[:ARG] --workdir=DIR [--config.KEY=VALUE ...]

Initialises multi-process JAX when asked: --distributed on TPU pods (the hosts find each other), or
--coordinator_address, --num_processes and --process_id elsewhere (--distributed alone also reads JAX's own
environment variables, e.g. under SLURM). Without either, every process trains alone. Then it trains, evaluates and
checkpoints into DIR (local or gs://), resuming from DIR's latest checkpoint when there is one.

The console shows the project's own lines; libraries' INFO logs (Orbax, absl, grain) appear with --verbosity=0
(and DEBUG with --verbosity=1, which also shows the traceback behind an error message).
"""
if __name__ == "__main__":  # first: glibc reads its tunables only at process start (huge_pages.py)
    from wpce_jax.huge_pages import reexec_with_huge_pages
    reexec_with_huge_pages()

import os

from absl import app, flags
from ml_collections import config_flags

from wpce_jax import distributed
from wpce_jax.cli import ConfigFileParser, fail, one_line, parse_flags, quiet_libraries, report_errors

flags.DEFINE_string("workdir", None, "Directory (local or gs://) for checkpoints, metrics.jsonl and TensorBoard "
                                     "events; a run restarted with the same workdir resumes.", required=True)
config_flags.DEFINE_config_file("config", None, "Experiment config file, e.g. configs/digits.py[:clip].",
                                lock_config=True)
FLAGS = flags.FLAGS
FLAGS["config"].parser = ConfigFileParser("config", lock_config=True)  # the same, with `configs` importable


def load_config():
    """FLAGS.config (None when not given), with one-line errors for a config file that does not exist or does not
    load, and for a --config.KEY that names no field."""
    if FLAGS["config"].value is None and not FLAGS["config"].present:
        return None
    path = config_flags.get_config_filename(FLAGS["config"]).partition(":")[0]  # without its ":ARG"
    if not os.path.isfile(path):
        fail(f"--config={path}: no such file (for example --config=configs/digits.py)")
    try:
        config = FLAGS.config
        config.keys()  # the file is loaded on first access
    except Exception as e:  # noqa: BLE001 - whatever the file's own code raised
        fail(f"--config={path} does not load: {one_line(e)}")
    return config


@report_errors
def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    quiet_libraries()
    import jax

    distributed.initialize()
    config = load_config()
    if config is None:
        fail("--config is required, e.g. --config=configs/digits.py")
    from wpce_jax.train import StopSignals, train_and_evaluate

    # Entered for the rest of the process: after a stop, a late second Ctrl-C or SIGTERM must not kill the exit.
    stop = StopSignals().__enter__()
    try:
        results = train_and_evaluate(config, FLAGS.workdir, stop_signals=stop)
    finally:
        stop.ignore_from_now_on()
    if jax.process_index() == 0 and results:
        print("final: " + "  ".join(f"{k} {v:.4f}" for k, v in sorted(results.items())), flush=True)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
