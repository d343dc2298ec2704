"""Peak memory on CPU, measured while something runs.

CUDA has max_memory_allocated; the CPU allocator keeps no such count, and the process's
lifetime peak (ru_maxrss) includes one-off spikes such as loading a checkpoint. So we sample
the resident set from /proc/self/statm in a background thread while the measured work runs,
after asking glibc to return freed memory (malloc_trim) so that earlier spikes do not linger.
"""

from __future__ import annotations

import ctypes
import os
import resource
import threading


def current_rss() -> int:
    """Resident set size of this process, in bytes."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):  # not Linux: the lifetime peak is all there is
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def trim() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class PeakRSS:
    """with PeakRSS() as m: work();  m.peak is the highest resident set seen, in bytes."""

    def __init__(self, interval: float = 0.01):
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, current_rss())

    def __enter__(self) -> "PeakRSS":
        trim()
        self.peak = current_rss()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.peak = max(self.peak, current_rss())
