"""User-facing errors.

Anything a user can cause (a bad config key, a missing path, an unreadable dataset) raises a
subclass of :class:`SelfsupError`. The CLI prints its message as one line and exits with code 2
(3 for a non-finite loss, 128 + signal after SIGTERM / SIGINT); ``--debug`` shows the traceback.
Programming errors stay ordinary exceptions.
"""


class SelfsupError(Exception):
    """An error caused by the user's input; its message names the culprit in one line."""


class ConfigError(SelfsupError):
    """An unknown config key, a value of the wrong type, or an inconsistent setting."""


class DataError(SelfsupError):
    """A dataset that cannot be found, read or used as configured."""


class CheckpointError(SelfsupError):
    """A checkpoint that is missing, unreadable, or from a different method or backbone."""


class TrainingInterrupted(SelfsupError):
    """SIGTERM / SIGINT stopped training after a checkpoint was written; the exit code is 128 + signal."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum


class NonFiniteError(SelfsupError):
    """A NaN/inf loss or gradient stopped training; the message names the step and the last good
    checkpoint (which never holds the non-finite weights). The exit code is 3."""

    exit_code = 3
