"""One of two processes for test_linear_probe.py: argv = port, process id, output .npz. Fits the linear probe on
scikit-learn's digits with its rows split over both processes' devices (gloo collectives), as the evaluation of a
multi-host run does; process 0 writes the fitted weights and bias."""
import sys

import jax
import numpy as np
from jax.sharding import Mesh
from sklearn.datasets import load_digits

port, process_id, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2, process_id=process_id)

from wpce_jax.evaluate import linear_probe as lp  # noqa: E402 - after the distributed start-up

x, y = load_digits(return_X_y=True)
mesh = Mesh(np.asarray(jax.devices()), ("rows",))
rows = lp.put_rows(x / 16, mesh)  # every process places the rows of its own devices from its own copy
probe = lp.fit(rows, y, 10, float(sys.argv[4]), mesh=mesh)
predicted = probe.predict(rows)
if process_id == 0:
    np.savez(out, weights=np.asarray(probe.weights), bias=np.asarray(probe.bias), predicted=predicted,
             devices=len(rows.x.sharding.device_set))
