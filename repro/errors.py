"""The one exception type a user sees as a single line (the CLI prints it and exits 2)."""


class UserError(Exception):
    """Bad input: the message names the problem and the fix, on one line, without a traceback."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))


class TrainingDiverged(UserError):
    """A loss became NaN/inf; the last good checkpoint is kept so nothing is lost."""
