"""Errors of bad dataset contents (a user error: the CLIs print one line, exit 2)."""


class DatasetError(ValueError):
    """A dataset's annotation file is malformed or unusable; the message names the file and the
    entry at fault."""
