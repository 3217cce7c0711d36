"""Multi-process start-up shared by the trainer's and the evaluator's command lines.

--distributed on TPU pods (the hosts find each other; also reads JAX's own environment variables, e.g. under
SLURM), or --coordinator_address, --num_processes and --process_id elsewhere. Without either, the process runs alone.
"""
from absl import flags

flags.DEFINE_string("coordinator_address", None, "host:port of process 0, for multi-process runs off TPU.")
flags.DEFINE_integer("num_processes", None, "Number of processes in a multi-process run.")
flags.DEFINE_integer("process_id", None, "This process's index in a multi-process run.")
flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() (implied by --coordinator_address; "
                                        "on TPU pods it needs no other argument).")
FLAGS = flags.FLAGS


def initialize() -> None:
    """jax.distributed.initialize() when the flags ask for several processes."""
    import jax

    if FLAGS.distributed or FLAGS.coordinator_address:
        # Cross-process collectives on the CPU backend (tests, CPU clusters); accelerators ignore this.
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(coordinator_address=FLAGS.coordinator_address,
                                   num_processes=FLAGS.num_processes, process_id=FLAGS.process_id)
