"""bit_keras's own error types.

Every error raised on purpose (bad argument, bad file, missing download) derives from
`BiTError`, so the command line can print exactly these as one line and let a real bug
keep its traceback. Each also derives from the built-in type callers would expect.
"""


class BiTError(Exception):
    """A problem with what was asked for, named in the message."""


class ConfigError(BiTError, ValueError):
    """A bad argument or flag value; the message names the argument (`weights=`)."""


class CheckpointError(BiTError, ValueError):
    """A checkpoint file that is not a BiT checkpoint of the expected shape."""


class DownloadError(BiTError, RuntimeError):
    """A checkpoint could not be fetched; the message says where to put the file by hand."""


class MissingFileError(BiTError, FileNotFoundError):
    """A file or folder the user named does not exist."""


class TargetExistsError(BiTError, FileExistsError):
    """An output would replace something that must not be replaced without being asked."""


class SetupError(BiTError, RuntimeError):
    """The environment cannot do what was asked (backend, device, dataset preparation, a missing package)."""


class InUseError(BiTError, RuntimeError):
    """Another process is writing the same run or export (the message names its PID)."""


class DivergedError(BiTError, FloatingPointError):
    """The loss became NaN or infinite; the run stopped before saving anything from it."""


class ClusterError(BiTError, RuntimeError):
    """A multi-worker job lost (or never reached) one of its workers; the message names it and how to rerun."""


class DiskFullError(BiTError, OSError):
    """A write failed for lack of space; the message names the path and the space it needs."""


class StoppedError(BiTError, RuntimeError):
    """The run was stopped by SIGTERM after saving what can be resumed; exit status 143, as schedulers expect."""

    exit_code = 143


class VerificationError(BiTError, RuntimeError):
    """An export does not compute what the Keras model computes (checked in its own runtime); nothing was written."""


class UsageError(BiTError):
    """A problem with the command-line flags themselves (a combination that cannot work); exit status 2."""
