"""Entry point: python -m wpce_jax.main --config=configs/NAME.py[:ARG] --workdir=DIR [--config.KEY=VALUE ...]

Initialises multi-process JAX when asked: --distributed on TPU pods (the hosts find each other), or
--coordinator_address, --num_processes and --process_id elsewhere (--distributed alone also reads JAX's own
environment variables, e.g. under SLURM). Without either, every process trains alone. Then it trains, evaluates and checkpoints into DIR, resuming from DIR's latest checkpoint when there is one.
"""
from absl import app, flags
from ml_collections import config_flags

from wpce_jax import distributed

flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics.jsonl and TensorBoard events; "
                                     "a run restarted with the same workdir resumes.", required=True)
config_flags.DEFINE_config_file("config", None, "Experiment config file, e.g. configs/digits.py[:clip].",
                                lock_config=True)
FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    import jax

    distributed.initialize()
    from wpce_jax.train import train_and_evaluate

    if FLAGS.config is None:
        raise app.UsageError("--config is required, e.g. --config=configs/digits.py")
    results = train_and_evaluate(FLAGS.config, FLAGS.workdir)
    if jax.process_index() == 0 and results:
        print("final: " + "  ".join(f"{k} {v:.4f}" for k, v in sorted(results.items())), flush=True)


if __name__ == "__main__":
    app.run(main)
