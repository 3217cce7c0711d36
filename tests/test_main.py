"""The command line: a user's mistake gets one line on stderr that names the input and the fix, exit status 2;
two runs cannot share a workdir."""
import os
import subprocess
import sys

import pytest

from wpce_jax import cli, train
from wpce_jax.data.run_data import prepare_digits
from runs import DIGITS, ROOT, refused_here, tiny_config


def one_line_error(cmd):
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert out.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), out.stderr[-3000:]
    return lines[0]


def main_cmd(*args):
    return [sys.executable, "-m", "wpce_jax.main", *args]


@pytest.mark.parametrize("case", ["missing_config", "unknown_key"])
def test_user_mistakes_in_the_flags_get_one_line(tmp_path, case):
    """The command line itself (its flag parsing and config loading): a subprocess each."""
    if case == "missing_config":
        line = one_line_error(main_cmd("--config=configs/nope.py", f"--workdir={tmp_path}"))
        assert "configs/nope.py" in line
    else:
        line = one_line_error(main_cmd(f"--config={DIGITS}", "--config.modle.embed_dim=8", f"--workdir={tmp_path}"))
        assert "modle" in line and "--config.KEY" in line


@pytest.mark.parametrize("case", ["unwritable_workdir", "tokenizer_dir"])
def test_user_mistakes_in_the_run_get_one_line(tmp_path, cache_dir, capsys, case):
    """Mistakes the training finds, in-process through the command lines' error handling (report_errors)."""
    if case == "unwritable_workdir":
        (tmp_path / "file").write_text("")
        workdir, overrides = tmp_path / "file" / "run", {}
    else:
        train_dir = prepare_digits(tiny_config(cache_dir)).train_dir  # a converted dataset
        workdir, overrides = tmp_path / "run", {"data.kind": "arrayrecord", "data.train_dir": train_dir,
                                                "data.tokenizer": "sentencepiece", "data.tokenizer_path": str(tmp_path)}
    lines = [line for line in refused_here(capsys, workdir, cache_dir, **overrides).splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), lines  # exit status 2: refused_here
    line = lines[0]
    if case == "unwritable_workdir":
        assert "--workdir" in line and "cannot create it" in line
    else:
        assert "data.tokenizer_path" in line and "is a directory" in line


HOLD = "import sys; from wpce_jax.workdir_lock import WorkdirLock\nwith WorkdirLock(sys.argv[1]):\n    " \
       "print('held', flush=True); sys.stdin.read()"


def test_a_second_run_on_a_live_workdir_is_refused(tmp_path, cache_dir, capsys):
    """A run holding the workdir (a process that only holds its lock) stops a second one before any compute, with
    one line naming the holder; in-process through the command lines' error handling."""
    workdir = str(tmp_path / "run")
    first = subprocess.Popen([sys.executable, "-c", HOLD, workdir], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True, env=dict(os.environ, PYTHONPATH=ROOT))
    try:
        assert first.stdout.readline() == "held\n"
        with pytest.raises(SystemExit) as exited:
            cli.report_errors(train.train_and_evaluate)(tiny_config(cache_dir), workdir)
    finally:
        first.communicate(timeout=60)  # stdin closed: it releases the lock
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert exited.value.code == 2 and len(lines) == 1, lines
    assert lines[0].startswith(f"error: {workdir} is in use by another run (pid {first.pid} on "), lines
    assert first.returncode == 0 and not os.listdir(workdir)  # nothing written by the second run
