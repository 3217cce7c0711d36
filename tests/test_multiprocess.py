"""Two real processes (jax.distributed on 127.0.0.1, gloo collectives, 4 CPU devices each) train, checkpoint
per-process data-iterator states, and resume exactly."""
import os
import shutil
import signal
import socket
import subprocess
import sys

import jax
import numpy as np

from wpce_jax import checkpoint
from runs import DIGITS, TINY, losses
from test_train import wait_for

STEPS = {"total_steps": 12, "checkpoint_every_steps": 6, "eval_every_steps": 12}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_two_processes(workdir, cache_dir, **overrides):
    port = free_port()
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
    flags = [f"--config.{k}={v}" for k, v in {**TINY, **STEPS, "data.cache_dir": cache_dir, **overrides}.items()]
    return [subprocess.Popen([sys.executable, "-m", "wpce_jax.main", f"--config={DIGITS}", f"--workdir={workdir}",
                              f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2", f"--process_id={i}",
                              *flags], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for i in range(2)]


def run_two_processes(workdir, cache_dir):
    procs = start_two_processes(workdir, cache_dir)
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    return outs[0][0]


def test_two_processes_train_and_resume_exactly(tmp_path):
    workdir, cache_dir = str(tmp_path / "run"), str(tmp_path / "cache")
    stdout = run_two_processes(workdir, cache_dir)
    assert "zeroshot/digits/top1" in stdout
    want_losses = losses(workdir)
    assert sorted(want_losses) == list(range(1, 13)) and all(np.isfinite(list(want_losses.values())))
    data_states = os.listdir(os.path.join(workdir, "checkpoints", "6", "data"))
    assert sorted(f for f in data_states if f.endswith(".json")) == ["process_0-of-2.json", "process_1-of-2.json"]
    want_params = jax.tree.map(np.asarray, checkpoint.load(workdir).params)

    # Forget everything after step 6, as if both processes had died there, and run again.
    shutil.rmtree(os.path.join(workdir, "checkpoints", "12"))
    stdout = run_two_processes(workdir, cache_dir)
    assert "resumed from the step-6 checkpoint" in stdout
    assert losses(workdir) == want_losses
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, checkpoint.load(workdir).params),
                 want_params)


def test_sigterm_to_one_process_stops_both_at_one_checkpoint(tmp_path):
    workdir = str(tmp_path / "run")
    procs = start_two_processes(workdir, str(tmp_path / "cache"), total_steps=400, checkpoint_every_steps=1000,
                                eval_every_steps=1000)
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
