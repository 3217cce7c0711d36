"""The command lines' errors, in-process: a mistake in the inputs (a UserError) is one line and exit status 2; any
other exception, e.g. a ValueError from inside a library, keeps its traceback, ends with one summary line and exits
with status 1. Evaluation's main stands for both command lines (they share wpce_jax.cli.report_errors); the flag
parsing errors of wpce_jax.main are covered by tests/test_main.py."""
import orbax.checkpoint as ocp
import pytest
from absl import flags, logging
from absl.testing import flagsaver

from wpce_jax import cli
from wpce_jax.errors import ConfigError, UserError
from wpce_jax.evaluate import __main__ as evaluate_cli


@pytest.fixture
def evaluate(capsys):
    """Runs `python -m wpce_jax.evaluate --workdir=WORKDIR` in-process; returns (exit status, stderr lines)."""
    verbosity = logging.get_verbosity()

    def run(workdir):
        with flagsaver.flagsaver(), pytest.raises(SystemExit) as exited:
            flags.FLAGS(["evaluate", f"--workdir={workdir}"])
            evaluate_cli.main(["evaluate"])
        return exited.value.code, [line for line in capsys.readouterr().err.splitlines() if line.strip()]

    yield run
    logging.set_verbosity(verbosity)  # main() lowers it to WARNING


def test_a_user_error_is_one_line_and_exit_status_2(tmp_path, evaluate):
    code, lines = evaluate(tmp_path)  # an empty directory: no checkpoints
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith("error: no checkpoints under ") and lines[0].endswith("a training workdir?")


def test_an_internal_error_keeps_its_traceback_and_ends_with_a_summary(tmp_path, evaluate, monkeypatch):
    def unreadable_metadata(self):  # what a library's own ValueError looks like from the command line
        raise ValueError("step metadata is not valid JSON")

    (tmp_path / "checkpoints").mkdir()
    monkeypatch.setattr(ocp.CheckpointManager, "all_steps", unreadable_metadata)
    code, lines = evaluate(tmp_path)
    text = "\n".join(lines)
    assert code == 1, text
    assert lines[0] == "Traceback (most recent call last):" and "in unreadable_metadata" in text, text
    assert lines[-1] == ("error: internal error (ValueError: step metadata is not valid JSON); the traceback above "
                         "is the one to report"), text


def raise_config_error():
    raise ConfigError("config field wpce.kernel must be one of ...")


def test_verbosity_1_shows_a_user_errors_traceback(monkeypatch):
    monkeypatch.setattr(logging, "get_verbosity", lambda: logging.DEBUG)
    with pytest.raises(ConfigError, match="wpce.kernel"):  # on to Python, which prints the traceback
        cli.report_errors(raise_config_error)()


def test_user_errors_keep_their_builtin_types():
    """Existing `except ValueError` / `except FileNotFoundError` still catch the project's user errors."""
    from wpce_jax.checkpoint import IncompatibleCheckpointError
    from wpce_jax.data.eval_sources import MissingDataError
    from wpce_jax.data.records import ManifestError
    from wpce_jax.platform import AcceleratorMissingError
    from wpce_jax.run_record import ConfigChangedError
    from wpce_jax.workdir_lock import WorkdirLockedError

    for error, builtin in ((ConfigChangedError, ValueError), (IncompatibleCheckpointError, ValueError),
                           (ManifestError, ValueError), (MissingDataError, FileNotFoundError),
                           (AcceleratorMissingError, RuntimeError), (WorkdirLockedError, RuntimeError)):
        assert issubclass(error, UserError) and issubclass(error, builtin), error
