"""Errors that the command line turns into one clear line and an exit status.

Raise ``ConfigError`` for anything the user must fix before work can start (a bad option,
a missing folder, an unmapped class): the CLI prints it and exits with status 2.
"""


class WastenetError(Exception):
    """Base class for errors meant for the user, not for a traceback."""

    exit_code = 1


class ConfigError(WastenetError):
    """A usage or configuration error: fails before any work starts (exit status 2)."""

    exit_code = 2
