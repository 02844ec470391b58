"""The one exception type a user sees as a single line (the CLI prints it and exits 2)."""


class UserError(Exception):
    """Bad input: the message names the problem and the fix, on one line, without a traceback."""

    def __init__(self, message: str) -> None:
        # Raised in a DataLoader worker, the error is re-created in the main process from "Caught
        # UserError in DataLoader worker process 0.\nOriginal Traceback ...\nrepro.errors.UserError:
        # <message>": keep only <message>, so the user still sees one line and no traceback.
        marker = f"{type(self).__name__}: "
        if message.startswith("Caught ") and "Original Traceback" in message and marker in message:
            message = message.rsplit(marker, 1)[1]
        super().__init__(" ".join(message.split()))


class TrainingDiverged(UserError):
    """A loss became NaN/inf; the last good checkpoint is kept so nothing is lost."""
