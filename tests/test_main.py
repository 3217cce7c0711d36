"""The command line: a user's mistake gets one line on stderr that names the input and the fix, exit status 2;
two runs cannot share a workdir."""
import os
import signal
import subprocess
import sys

import pytest

from wpce_jax.data.run_data import prepare_digits
from runs import DIGITS, cli, tiny_config
from test_train import wait_for


def one_line_error(cmd):
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert out.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), out.stderr[-3000:]
    return lines[0]


def main_cmd(*args):
    return [sys.executable, "-m", "wpce_jax.main", *args]


@pytest.mark.parametrize("case", ["missing_config", "unknown_key", "unwritable_workdir", "tokenizer_dir"])
def test_user_mistakes_get_one_line(tmp_path, cache_dir, case):
    if case == "missing_config":
        line = one_line_error(main_cmd("--config=configs/nope.py", f"--workdir={tmp_path}"))
        assert "configs/nope.py" in line
    elif case == "unknown_key":
        line = one_line_error(main_cmd(f"--config={DIGITS}", "--config.modle.embed_dim=8", f"--workdir={tmp_path}"))
        assert "modle" in line and "--config.KEY" in line
    elif case == "unwritable_workdir":
        (tmp_path / "file").write_text("")
        line = one_line_error(cli(str(tmp_path / "file" / "run"), cache_dir))
        assert "--workdir" in line and "cannot create it" in line
    else:
        train_dir = prepare_digits(tiny_config(cache_dir)).train_dir  # a converted dataset
        line = one_line_error(cli(str(tmp_path / "run"), cache_dir, **{
            "data.kind": "arrayrecord", "data.train_dir": train_dir, "data.tokenizer": "sentencepiece",
            "data.tokenizer_path": str(tmp_path)}))
        assert "data.tokenizer_path" in line and "is a directory" in line


def test_a_second_run_on_a_live_workdir_is_refused(tmp_path, cache_dir):
    workdir = str(tmp_path / "run")
    first = subprocess.Popen(cli(workdir, cache_dir, total_steps=2000, log_every_steps=1, eval_every_steps=2000,
                                 checkpoint_every_steps=2000), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    try:
        wait_for(lambda: os.path.exists(os.path.join(workdir, "metrics.jsonl")), first)
        line = one_line_error(cli(workdir, cache_dir))
        assert f"in use by another run (pid {first.pid} on " in line
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=300)
    assert first.returncode == 0
