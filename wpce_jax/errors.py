"""The project's own error types: a mistake in the user's inputs, as opposed to a fault in the code or a library.

A `UserError` names the input (a config field, a path, a flag) and the fix; the command lines print it as one line
and exit with status 2. Any other exception is a fault: it keeps its traceback (wpce_jax/cli.py).
"""


class UserError(Exception):
    """A mistake in the inputs: a config that cannot work, a missing path or dataset, a changed config on resume."""
