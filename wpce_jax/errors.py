"""The project's own error types: a mistake in the user's inputs, as opposed to a fault in the code or a library.

A `UserError` names the input (a config field, a path, a flag) and the fix; the command lines print it as one line
and exit with status 2. Any other exception is a fault: it keeps its traceback (wpce_jax/cli.py). Each subclass also
derives from the builtin error it replaced, so that `except ValueError` (or FileNotFoundError, ...) still catches it.
"""


class UserError(Exception):
    """A mistake in the inputs: a config that cannot work, a missing path or dataset, a changed config on resume."""


class ConfigError(UserError, ValueError):
    """A config field, a --config.KEY override or a flag whose value cannot work."""


class DataError(UserError, ValueError):
    """Data the inputs name that exists but cannot be used as it is (e.g. a class-folder set with the wrong classes)."""


class MissingInputError(UserError, FileNotFoundError):
    """A path the inputs name (a file, a dataset, a checkpoint) that does not exist."""


class WrongPathError(UserError, OSError):
    """A path the inputs name that exists but is the wrong kind or cannot be written (a directory given for a file,
    an unwritable --workdir)."""
