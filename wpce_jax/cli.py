"""What the command lines share: library logs kept below the console, and one line for a user's mistake.

Errors that describe a mistake in the inputs (wpce_jax.errors.UserError: a config file that does not exist, an
unknown --config.KEY, an unwritable workdir, a changed config on resume, ...) print "error: <what, and the fix>" and
exit with status 2 instead of a traceback; --verbosity=1 shows the traceback. Any other exception is a fault in the
code or a library: its traceback stays, followed by one summary line, and the exit status is 1. --verbosity=0 shows
the libraries' INFO logs.
"""
import functools
import os
import sys
import traceback

from absl import app, flags, logging
# The parser behind config_flags.DEFINE_config_file (not re-exported by config_flags; ml_collections is pinned).
from ml_collections.config_flags.config_flags import ConfigFileFlagParser

from wpce_jax.errors import UserError

FLAGS = flags.FLAGS


def quiet_libraries() -> None:
    """Library INFO logs below the console unless --verbosity was given."""
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)


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


class ConfigFileParser(ConfigFileFlagParser):
    """ml_collections' loading of --config=PATH[:ARG] (PATH's get_config(ARG)), for a config inside a package.

    The configs import their shared pieces as a package (`from configs import common`), but ml_collections loads the
    file by path, which makes nothing importable: that works from the repository root only, where `configs` is found
    in the working directory. So when PATH's directory is a package, its parent goes first on sys.path, as Python
    puts a script's own directory (first: a `configs` elsewhere on the path must not win). Also, ml_collections
    re-raises an error of get_config with the whole traceback in its message; the config's own error is kept
    instead (e.g. one line for a bad :ARG)."""

    def parse(self, path):
        package = os.path.dirname(os.path.abspath(path.partition(":")[0]))
        if os.path.isfile(os.path.join(package, "__init__.py")) and os.path.dirname(package) not in sys.path:
            sys.path.insert(0, os.path.dirname(package))
        try:
            return super().parse(path)
        except (TypeError, ValueError) as e:
            raise (e.__context__ or e) from None



def load_config_file(path: str, arg: str | None = None):
    """get_config(arg) of the config file at `path`, loaded as --config=PATH[:ARG] loads it (left unlocked)."""
    return ConfigFileParser("config", lock_config=False).parse(path if arg is None else f"{path}:{arg}")


def parse_flags(argv, known_only: bool = False):
    """absl's flag parsing, with a one-line error instead of the parser's traceback (an unknown flag, a --config.KEY
    that names no field of the config, a value of the wrong type). known_only: unknown flags are left in the
    returned arguments."""
    try:
        return FLAGS(argv, known_only=known_only)
    except Exception as e:  # noqa: BLE001 - absl and ml_collections raise several kinds
        hint = " (a --config.KEY=VALUE names no field of the config)" if isinstance(e, (KeyError, AttributeError)) \
            else ""
        print(f"error: {one_line(e)}{hint}", file=sys.stderr)
        sys.exit(2)


def report_errors(main):
    """`main` (an absl main function) with a UserError as one line and exit status 2, and any other exception as its
    traceback plus a summary line and exit status 1. absl's UsageError goes on to app.run, which prints the usage."""
    @functools.wraps(main)
    def wrapped(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except app.UsageError:
            raise
        except UserError as e:
            fail(str(e))  # our own message: its line breaks, if any, are meant (a changed config lists fields)
        except Exception as e:  # noqa: BLE001 - a fault: report it whole
            traceback.print_exc()
            print(f"error: internal error ({type(e).__name__}: {one_line(e)}); the traceback above is the one to "
                  f"report", file=sys.stderr, flush=True)
            sys.exit(1)
    return wrapped
