"""Peak memory on CPU, measured while something runs.

CUDA has max_memory_allocated; the CPU allocator keeps no such count, and the process's
lifetime peak (ru_maxrss) includes one-off spikes such as loading a checkpoint. Two measures:

- `PeakRSS` samples the resident set from /proc/self/statm in a background thread while the
  measured work runs, after asking glibc to return freed memory (malloc_trim) so that earlier
  spikes do not linger. It sees everything the process holds, and moves with malloc's caching
  and the sampling instant (a few percent between identical runs).
- `TensorPeak` counts tensor bytes exactly, as CUDA's max_memory_allocated does: the bytes of
  every tensor alive at the start (`live_tensor_bytes`) plus the highest running sum of the
  allocations and frees the CPU allocator reports to torch's profiler during the work. Identical
  work gives identical figures, so small differences between methods are resolved.
"""

from __future__ import annotations

import ctypes
import gc
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


def live_tensor_bytes() -> int:
    """Bytes of the distinct storages of every tensor Python can reach now (parameters, buffers,
    gradients, optimiser state, cached attributes). Call it between steps, when no autograd
    graph holds tensors that Python cannot see."""
    import torch

    gc.collect()
    storages = {}
    for obj in gc.get_objects():
        # type(), not isinstance: isinstance reads __class__, which some lazy module objects warn on.
        if issubclass(type(obj), torch.Tensor) and obj.device.type == "cpu" and not obj.is_meta:
            try:
                s = obj.untyped_storage()
            except (RuntimeError, NotImplementedError):  # tensors without storage (sparse, functional)
                continue
            storages[s.data_ptr()] = max(storages.get(s.data_ptr(), 0), s.nbytes())
    return sum(storages.values())


class TensorPeak:
    """with TensorPeak() as m: work();  m.peak: the most tensor bytes alive at once during the work
    (`live_tensor_bytes` at the start plus the allocator's highest net allocation), in bytes."""

    def __init__(self):
        self.start = 0
        self.peak = 0
        self._profile = None

    def __enter__(self) -> "TensorPeak":
        from torch.profiler import ProfilerActivity, profile

        self.start = live_tensor_bytes()
        self._profile = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
        self._profile.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._profile.__exit__(*exc)
        events = self._profile.profiler.kineto_results.events()
        # Allocations and frees as the allocator reported them, in time order (several threads).
        deltas = sorted((e.start_ns(), e.nbytes()) for e in events if e.name() == "[memory]")
        running = highest = 0
        for _, nbytes in deltas:
            running += nbytes
            highest = max(highest, running)
        self.peak = self.start + highest
