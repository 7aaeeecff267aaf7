"""Quiet start-up of the frameworks' native (C++) code for command-line runs.

TensorFlow's C++ runtime logs a few lines on every start — oneDNN notices, "could not find cuda
drivers", "failed call to cuInit" on machines without a GPU, absl's "All log messages before
absl::InitializeLog()" — straight to file descriptor 2, before and regardless of
``TF_CPP_MIN_LOG_LEVEL`` in recent versions. :func:`filter_native_logs` puts a filter on
descriptor 2 that drops exactly those lines and passes everything else through unchanged (the
command's own messages, Python warnings and tracebacks, any other native error).

Example:
    >>> stop = filter_native_logs()      # at the start of a command
    >>> ...                              # import TensorFlow, load a Keras model, explain
    >>> stop()                           # flushes and restores stderr (also done at exit)
"""

from __future__ import annotations

import atexit
import contextlib
import faulthandler
import os
import re
import threading
from collections.abc import Callable, Iterator

__all__ = ["NOISE", "filter_native_logs", "is_noise", "native_logs_filtered"]

#: Lines dropped: native INFO/WARNING records (``I0000 00:00:17.95 123 file.cc:45] ...``), absl's
#: pre-initialisation notice, and the GPU probes' failures on machines without one.
NOISE = (
    re.compile(r"^[IW]\d{4} \d\d:\d\d:\d+\.\d+\s+\d+ [\w./-]+:\d+\] "),
    re.compile(r"^WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"),
    re.compile(r"^E\d{4} \d\d:\d\d:\d+\.\d+\s+\d+ cuda_(platform|executor|driver)\.cc:\d+\] failed call to cuInit"),
    re.compile(r"^To enable the following instructions: .*rebuild TensorFlow with the appropriate compiler flags\.$"),
)


def is_noise(line: str) -> bool:
    """Whether ``line`` is framework start-up noise :func:`filter_native_logs` drops.

    Example:
        >>> is_noise("I0000 00:00:1795986794.161650   18681 port.cc:153] oneDNN custom operations are on.")
        True
    """
    return any(pattern.match(line) for pattern in NOISE)


def filter_native_logs() -> Callable[[], None]:
    """Filter file descriptor 2 (stderr) through :func:`is_noise` until the returned function
    is called (or the process exits). Also sets ``TF_CPP_MIN_LOG_LEVEL=2`` for TensorFlow's
    own filter, unless set already. Returns a no-op where descriptor 2 cannot be filtered.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        original = os.dup(2)
        read_end, write_end = os.pipe()
    except OSError:
        return lambda: None
    os.dup2(write_end, 2)
    os.close(write_end)
    # A fault handler (PYTHONFAULTHANDLER, -X faulthandler) dumps stacks from a signal handler,
    # when the filter's thread may never run again: it writes to the real stderr instead.
    moved_faults = faulthandler.is_enabled()
    if moved_faults:
        faulthandler.enable(file=original, all_threads=True)

    def forward() -> None:
        with os.fdopen(read_end, "rb") as source:
            for raw in source:
                if not is_noise(raw.decode("utf-8", "replace")):
                    os.write(original, raw)

    thread = threading.Thread(target=forward, name="xai-toolbox-stderr-filter", daemon=True)
    thread.start()
    stopped = False

    def stop() -> None:
        nonlocal stopped
        if stopped:
            return
        stopped = True
        import sys

        sys.stderr.flush()
        os.dup2(original, 2)  # closes the pipe's last write end: the thread reads to the end
        thread.join(timeout=5.0)
        if moved_faults:
            faulthandler.enable(file=2, all_threads=True)
        os.close(original)

    atexit.register(stop)
    return stop


@contextlib.contextmanager
def native_logs_filtered(active: bool = True) -> Iterator[None]:
    """:func:`filter_native_logs` for the duration of a ``with`` block (nothing when not
    ``active``, e.g. under ``--debug``).

    Example:
        >>> with native_logs_filtered():
        ...     run_command()
    """
    stop = filter_native_logs() if active else (lambda: None)
    try:
        yield
    finally:
        stop()
