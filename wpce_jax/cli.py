"""What the command lines share: library logs kept below the console, and one line for a user's mistake.

Errors that describe a mistake in the inputs (a config file that does not exist, an unknown --config.KEY, an
unwritable workdir, a changed config on resume, ...) print "error: <what, and the fix>" and exit with status 2
instead of a traceback; --verbosity=1 shows the traceback. --verbosity=0 shows the libraries' INFO logs.
"""
import sys

from absl import flags, logging

FLAGS = flags.FLAGS


def quiet_libraries() -> None:
    """Library INFO logs below the console unless --verbosity was given."""
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)


def user_errors() -> tuple[type, ...]:
    """Errors that describe a mistake in the inputs (their message names the input and the fix)."""
    from wpce_jax.data.records import ManifestError
    from wpce_jax.errors import UserError
    from wpce_jax.platform import AcceleratorMissingError
    from wpce_jax.run_record import ConfigChangedError
    from wpce_jax.workdir_lock import WorkdirLockedError

    return (UserError, ValueError, FileNotFoundError, IsADirectoryError, PermissionError, ManifestError,
            AcceleratorMissingError, ConfigChangedError, WorkdirLockedError)


def fail(message: str) -> None:
    """One line on stderr, exit status 2; with --verbosity >= 1 the traceback is shown instead."""
    if logging.get_verbosity() >= logging.DEBUG and sys.exc_info()[0] is not None:
        raise
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(2)


def one_line(error: BaseException) -> str:
    while isinstance(error, (KeyError, AttributeError)) and error.args:  # their str() is a repr: unwrap it
        error = error.args[0]
    return " ".join(str(error).split())


def parse_flags(argv):
    """absl's flag parsing, with a one-line error instead of the parser's traceback (an unknown flag, a --config.KEY
    that names no field of the config, a value of the wrong type)."""
    try:
        return FLAGS(argv)
    except Exception as e:  # noqa: BLE001 - absl and ml_collections raise several kinds
        hint = " (a --config.KEY=VALUE names no field of the config)" if isinstance(e, (KeyError, AttributeError)) \
            else ""
        print(f"error: {one_line(e)}{hint}", file=sys.stderr)
        sys.exit(2)
