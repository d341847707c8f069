"""User-facing errors.

A `FastAdaptError` is a mistake the user can fix (bad config, missing file, impossible episode).
Its message is one line that says what went wrong, where, and how to fix it; the CLI prints it
and exits with code 2 instead of showing a traceback.
"""


class FastAdaptError(Exception):
    """An error caused by user input or environment, with a one-line actionable message."""
