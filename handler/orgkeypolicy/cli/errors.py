"""The command line's own error."""

from __future__ import annotations


class CommandError(Exception):
    """Bad input or surroundings of a command; ``str(error)`` is the one line shown."""
