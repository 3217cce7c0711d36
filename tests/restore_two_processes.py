"""One of two processes for test_restore.py: argv = port, process id, a shared directory. Saves step-10 and step-20
checkpoints of an array split over the two processes, then resumes three times with a fault injected into one
process's Checkpointer.restore; prints one JSON line of what each resume ended with."""
import json
import os
import sys

import jax
import numpy as np
from ml_collections import ConfigDict

port, process_id, directory = sys.argv[1], int(sys.argv[2]), sys.argv[3]
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2, process_id=process_id)

from wpce_jax import restore  # noqa: E402 - after the distributed start-up
from wpce_jax.checkpoint import Checkpointer  # noqa: E402

mesh = jax.sharding.Mesh(np.array(jax.devices()), ("x",))
sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("x"))
target = {"a": jax.ShapeDtypeStruct((4,), np.float32, sharding=sharding)}
config = ConfigDict({"seed": 0})

saver = Checkpointer(directory, max_to_keep=5, async_save=False)
for step in (10, 20):
    values = np.arange(4, dtype=np.float32) + step
    saver.save(step, {"a": jax.make_array_from_callback((4,), sharding, lambda i: values[i])}, 2 * step, config)
saver.close()

original = Checkpointer.restore


def inject(process, error, step=None):
    """Checkpointer.restore raising `error` once, on `process` only (for checkpoint `step`, or any)."""
    pending = [error] if process_id == process else []

    def restore_with_fault(self, s, abstract):
        if pending and (step is None or s == step):
            raise pending.pop()
        return original(self, s, abstract)
    Checkpointer.restore = restore_with_fault


def resume():
    checkpointer = Checkpointer(directory, max_to_keep=5)
    try:
        step, _, examples = restore.resume(checkpointer, config, target, delays=(0.1,))
        return [step, examples / 2]
    except Exception as e:  # noqa: BLE001 - reported to the test
        return f"{type(e).__name__}: {e}"
    finally:
        checkpointer.close()


results = {}
inject(1, OSError("Connection reset by peer"))
results["transient"] = resume()
inject(1, ValueError("DATA_LOSS: Error decoding b-tree node: CRC-32C checksum verification failed"), step=20)
results["damaged"] = resume()
inject(0, RuntimeError("injected on process 0"))
results["unknown"] = resume()
results["listing"] = sorted(os.listdir(os.path.join(directory, "checkpoints")))
print(json.dumps(results), flush=True)
