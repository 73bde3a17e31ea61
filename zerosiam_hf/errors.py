"""The exceptions a user meets: each one is printed by the commands as one line (`cli.exits_cleanly`)."""


class UsageError(ValueError):
    """A problem with what the user asked for; the commands print it as one line and exit with status 2."""


class NotOneRun(UsageError):
    """Processes a launcher started that do not form one run; every one of them stops, and the one the launcher
    numbered 0 ($RANK) prints the line, so that the user reads it once."""


class RunStopped(RuntimeError):
    """A run that stopped before its end; the commands print the message as one line and exit with `exit_code`."""

    def __init__(self, message: str, exit_code: int = 1, resumable: bool = False):
        super().__init__(message)
        self.exit_code = exit_code
        self.resumable = resumable
