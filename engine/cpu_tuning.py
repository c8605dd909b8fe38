"""How a process that hosts an ``Engine`` uses the CPU: one multi-threaded OpenMP pool, and a malloc that keeps its memory.

Two effects measured on CPU training (figures in docs/performance.md, "CPU
training: OpenMP pools and malloc"), both invisible in a plain training script
and both present in the server:

1. **One OpenMP pool per process.** torch's OpenMP runtime (libgomp) gives every
   OS thread that runs a parallel torch op a pool of worker threads of its own.
   Once the process holds more pooled threads than the machine has cores,
   libgomp makes the workers of every pool sleep right after each parallel
   region instead of spinning briefly, and each of the thousands of regions in a
   training pass then waits for its workers to be woken. A pass became 25-50 %
   slower for the rest of the process's life once a second thread had computed
   anything: one sample on the HF back end (the sampling lane's thread) took a
   server's training step from 283 to 354 ms. libgomp has no setting for this
   (``GOMP_SPINCOUNT`` does not apply to the throttled case), so only threads
   that train run torch with its default thread count, and every other thread
   that computes (the sampler's, a model load elsewhere) uses one thread and so
   creates no pool. A thread that already trains keeps its pool for other work.

2. **malloc keeps large blocks.** glibc maps blocks above its mmap threshold
   (adaptive, 32 MiB at most: one request's 8 x 128 x 8,192 logits are 32 MiB)
   fresh on every allocation and unmaps them on free, and returns free memory at
   the top of the heap to the system; every training step then faults in and
   zeroes the same pages again. Raising both thresholds to 256 MiB keeps the
   memory for the next step: 228 -> 164 ms per step in process (8 x 128 tokens,
   the built-in ``small`` model, 2 cores). The price is that the process's
   resident size stays near its peak instead of shrinking between steps; blocks
   above 256 MiB are still mapped and returned as before.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import platform
import threading
from typing import Iterator

import torch

logger = logging.getLogger(__name__)

# torch's default for this process (the cores, or OMP_NUM_THREADS), read once at import.
TRAINING_THREADS = torch.get_num_threads()

_MALLOC_THRESHOLD = 256 * 1024 * 1024
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameter numbers (malloc.h)

_local = threading.local()  # .threads: what this thread last set (absent: not set yet)
_malloc_lock = threading.Lock()
_malloc_tuned = False


def set_training_threads(threads: int) -> None:
    """Train with ``threads`` torch threads from now on (benchmarks; the default is torch's own)."""
    global TRAINING_THREADS
    TRAINING_THREADS = threads
    torch.set_num_threads(threads)
    _local.threads = threads


def for_training() -> None:
    """Call first in every engine entry point that trains: this thread uses torch's default thread count."""
    if getattr(_local, "threads", None) != TRAINING_THREADS:
        torch.set_num_threads(TRAINING_THREADS)
        _local.threads = TRAINING_THREADS


def for_other_work() -> None:
    """Call first in engine entry points that compute without training (sampling, loading a model).

    A thread that has not trained computes with one thread, so that it creates no
    OpenMP pool of its own; a thread that trains keeps its pool for this work too.
    """
    if getattr(_local, "threads", None) is None:
        torch.set_num_threads(1)
        _local.threads = 1


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Compute with one torch thread inside the block (no pool is made), then restore the thread count.

    For one-off work on a thread that may later train or run plain torch code
    (building the tiny model on ``tuft``'s main thread, or in a test or benchmark).
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds to 256 MiB, once per process; False where not glibc."""
    global _malloc_tuned
    with _malloc_lock:
        if _malloc_tuned:
            return True
        if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
            return False  # musl, macOS: other allocators, left as they are
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        ok = all(libc.mallopt(param, ctypes.c_int(_MALLOC_THRESHOLD)) == 1
                 for param in (_M_MMAP_THRESHOLD, _M_TRIM_THRESHOLD))
        if not ok:
            logger.warning("could not raise malloc's thresholds; CPU training runs slower")
        _malloc_tuned = ok
        return ok
