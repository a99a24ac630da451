"""Errors that reach the user as one line."""


class UserError(Exception):
    """Bad input from the user (a path, a size, a kernel file): exit status 2."""


class MigrationError(Exception):
    """A live migration that cannot go on; the message says why."""
