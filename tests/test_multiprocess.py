"""Two real processes (jax.distributed on 127.0.0.1, gloo collectives, 4 CPU devices each) train, resume exactly,
and continue a one-process run (8 devices) exactly: the data position is a count of global examples."""
import os
import shutil
import signal

import jax
import numpy as np

from wpce_jax import checkpoint
from wpce_jax.data.run_data import prepare_digits
from runs import cli, cpu_env, losses, run_two_processes, start_two_processes, tiny_config
from test_train import wait_for


def two_processes(workdir, cache_dir, **overrides):
    """argv_of(port, i) for runs.start_two_processes: `cli`'s training command as process i of 2."""
    return lambda port, i: [*cli(workdir, cache_dir, **overrides), f"--coordinator_address=127.0.0.1:{port}",
                            "--num_processes=2", f"--process_id={i}"]


def test_two_processes_continue_a_one_process_run_exactly(tmp_path, cache_dir, digits_run):
    want_losses = losses(digits_run)  # the session's uninterrupted run: one process, 8 devices
    assert sorted(want_losses) == list(range(1, 31)) and all(np.isfinite(list(want_losses.values())))
    want_params = jax.tree.map(np.asarray, checkpoint.load(digits_run).params)

    # Forget everything after step 20, as if the run had died there, and go on as two processes of 4 devices.
    workdir = str(tmp_path / "two")
    shutil.copytree(digits_run, workdir)
    shutil.rmtree(os.path.join(workdir, "checkpoints", "30"))
    stdout = run_two_processes(two_processes(workdir, cache_dir), cpu_env(4))[0]
    assert "resumed from the step-20 checkpoint" in stdout and "zeroshot/digits/top1" in stdout
    got = losses(workdir)
    assert [got[s] for s in range(1, 21)] == [want_losses[s] for s in range(1, 21)]
    # Steps 21-30 see the same global batches (the data is bit-identical for any process count: test_data_pipeline),
    # but gloo's cross-process sums add the 8 devices' partial sums in another order than XLA's in-process ones:
    # float32 rounding, ~1e-7 relative. Different data or RFF draws would move the loss by 1e-3 or more.
    np.testing.assert_allclose([got[s] for s in range(21, 31)], [want_losses[s] for s in range(21, 31)], rtol=2e-6)
    # Parameters: Adam divides each update by the gradient's own size, so entries whose gradient is rounding noise
    # (attention key biases: softmax ignores a shift) take noise-signed steps of ~lr; the largest difference
    # seen is 9e-6, and 1e-4 absolute leaves room for several such steps.
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4),
                 jax.tree.map(np.asarray, checkpoint.load(workdir).params), want_params)

    # Two processes resume their own run bit-exactly (the same reduction order as the run they continue).
    want_losses = got
    shutil.rmtree(os.path.join(workdir, "checkpoints", "30"))
    stdout = run_two_processes(two_processes(workdir, cache_dir), cpu_env(4))[0]
    assert "resumed from the step-20 checkpoint" in stdout
    assert losses(workdir) == want_losses


def test_sigterm_to_one_process_stops_both_at_one_checkpoint(tmp_path, cache_dir):
    workdir = str(tmp_path / "run")
    prepare_digits(tiny_config(cache_dir))  # built once, not by both processes at once (test_concurrent_prepare)
    procs = start_two_processes(two_processes(workdir, cache_dir, total_steps=400, checkpoint_every_steps=1000,
                                              eval_every_steps=1000), cpu_env(4))
    metrics = os.path.join(workdir, "metrics.jsonl")
    wait_for(lambda: os.path.exists(metrics) and len(open(metrics).readlines()) >= 5, procs[0])
    procs[1].send_signal(signal.SIGTERM)  # a preemption notice reaching one host only
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    saved = [int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit()]
    assert len(saved) == 1 and 5 <= saved[0] < 400, saved
    assert f"SIGTERM: saved the step-{saved[0]} checkpoint" in outs[0][0]
    assert max(losses(workdir)) == saved[0]
