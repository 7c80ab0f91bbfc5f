"""Keeps the command line's output ours: TensorFlow's start-up banner and log lines stay out.

TensorFlow writes its first lines (oneDNN, CUDA probing, "All log messages before
absl::InitializeLog()") from native code while it is imported, straight to file
descriptor 2, before any Python or environment setting can reach them. So the first
`import tensorflow` runs with descriptor 2 pointed at /dev/null; `TF_CPP_MIN_LOG_LEVEL`
silences what native code logs afterwards, and absl/Python logging is set to warnings.
A user's own `TF_CPP_MIN_LOG_LEVEL` wins for what native code logs after the import (the
start-up lines are printed whatever the level, so they stay out all the same), and
`--verbose` leaves everything as it was.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.util
import logging
import os
import sys
import warnings


def quiet_tensorflow() -> None:
    """Called once by the CLI, before anything imports TensorFlow."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # a user's own level wins after the import
    if "tensorflow" not in sys.modules:
        sys.meta_path.insert(0, _QuietTensorFlowFinder())
    quiet_python_logs()
    # Libraries' own notices (tensorflow-hub's pkg_resources, Keras' deprecations) are not ours.
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)


def quiet_python_logs() -> None:
    """absl and TensorFlow's Python loggers to warnings (absl's flag parsing resets absl's: call after it)."""
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.WARNING)
    logging.getLogger("tensorflow").setLevel(logging.ERROR)


@contextlib.contextmanager
def descriptor_2_silenced():
    """Silences C++ writes to standard error (file descriptor 2), e.g. TFLite's calibrator."""
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


class _QuietLoader(importlib.abc.Loader):
    def __init__(self, loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        with descriptor_2_silenced():
            self.loader.exec_module(module)


class _QuietTensorFlowFinder(importlib.abc.MetaPathFinder):
    """Wraps the loader of the first `import tensorflow`, then steps aside."""

    def find_spec(self, name, path, target=None):
        if name != "tensorflow":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            spec.loader = _QuietLoader(spec.loader)
        return spec
