"""Tiny digits runs for tests: a model small enough that a subprocess run of 30 steps takes seconds; in this
process (`train_here`) it skips the start-up and the compiles already done."""
import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from wpce_jax import checkpoint, cli as wpce_cli, config_fields, train
from xla_flags import cpu_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIGITS = os.path.join(ROOT, "configs", "digits.py")


def cpu_env(devices: int) -> dict:
    """The environment of a test's JAX subprocess: this one's, with `devices` CPU devices and the test programs'
    compiler flags (xla_flags.py)."""
    return {**os.environ, "XLA_FLAGS": cpu_flags(devices), "JAX_PLATFORMS": "cpu"}


def free_port() -> int:
    """A free local TCP port (a jax.distributed coordinator's, a test server's)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_two_processes(argv_of, env: dict) -> list[subprocess.Popen]:
    """Starts argv_of(port, i) for processes i = 0 and 1 at once (a free local port for their jax.distributed
    coordinator), with `env`, their output piped."""
    port = free_port()
    return [subprocess.Popen(argv_of(port, i), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for i in range(2)]


def run_two_processes(argv_of, env: dict, timeout: float = 600) -> list[str]:
    """`start_two_processes`, then waits for both; asserts both exit 0; returns their stdouts."""
    procs = start_two_processes(argv_of, env)
    outs = [p.communicate(timeout=timeout) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    return [out for out, _ in outs]


# The linear probe is left to the evaluation tests (python -m wpce_jax.evaluate on the shared run).
TINY = {"total_steps": 30, "batch_size": 32, "log_every_steps": 1, "eval_every_steps": 30,
        "checkpoint_every_steps": 10, "eval.batch_size": 64, "model.embed_dim": 16, "model.image.width": 32,
        "model.image.depth": 1, "model.image.heads": 2, "model.image.mlp_dim": 64, "model.text.width": 32,
        "model.text.depth": 1, "model.text.heads": 2, "model.text.mlp_dim": 64, "wpce.num_features": 32,
        "optim.warmup_steps": 5, "eval.linear_probe": ""}


def tiny_config(cache_dir, path=DIGITS, arg=None, **overrides):
    """The config file at `path` (its get_config(arg)) with the tiny model and `overrides` (dotted keys)."""
    config = wpce_cli.load_config_file(path, arg)
    for key, value in {**TINY, "data.cache_dir": cache_dir, **overrides}.items():
        config_fields.set_field(config, key, value)
    return config


def cli(workdir, cache_dir, path=DIGITS, arg=None, **overrides):
    """The training command of `tiny_config`'s run."""
    flags = [f"--config.{k}={v}" for k, v in {**TINY, "data.cache_dir": cache_dir, **overrides}.items()]
    config = path if arg is None else f"{path}:{arg}"
    return [sys.executable, "-m", "wpce_jax.main", f"--config={config}", f"--workdir={workdir}", *flags]


def run(cmd):
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return out


def run_cli(workdir, cache_dir, **overrides):
    return run(cli(workdir, cache_dir, **overrides))


def train_here(workdir, cache_dir, path=DIGITS, arg=None, **overrides):
    """`cli`'s run, trained in this process (the command line minus its flag parsing); returns its last evaluation.
    Its lines go to this process's stdout (capsys)."""
    return train.train_and_evaluate(tiny_config(cache_dir, path, arg, **overrides), str(workdir))


def refused_here(capsys, workdir, cache_dir, **overrides):
    """`cli`'s run in this process, through the command line's error handling, expected to stop with a user's
    mistake: returns its stderr (one line or a message that lists fields), after checking exit status 2."""
    with pytest.raises(SystemExit) as exited:
        wpce_cli.report_errors(train.train_and_evaluate)(tiny_config(cache_dir, **overrides), str(workdir))
    err = capsys.readouterr().err
    assert exited.value.code == 2, err[-3000:]
    return err


def losses(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    return {r["step"]: r["train/loss"] for r in records if "train/loss" in r}


def final_params(workdir):
    return jax.tree.map(np.asarray, checkpoint.load(workdir).params)
