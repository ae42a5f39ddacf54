"""One error type for mistakes a user can fix; the CLI prints it as one line instead of a traceback."""


class UserError(Exception):
    """Bad input, a missing file, a refused overwrite: something the user can act on from the message alone."""
