"""Kill helper processes when the process that started them dies, however it dies.

vLLM's engine core runs in spawned processes that do not watch their parent: a
worker or server that is SIGKILLed (or exits without closing the engine) would
leave them running, holding gigabytes. A ``Reaper`` is a tiny process that
reads process ids from a pipe held by its parent; when the parent dies the pipe
closes and the reaper kills every process it was told about. An orderly
``release`` tells it to leave them alone.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from typing import Callable

logger = logging.getLogger(__name__)

_REAPER = """
import os, signal, sys
fd, pids, buf = int(sys.argv[1]), [], b""
while True:
    chunk = os.read(fd, 4096)
    if not chunk:  # the parent is gone: take its helpers with it
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        sys.exit(0)
    *lines, buf = (buf + chunk).split(b"\\n")
    for line in lines:
        if line == b"q":  # an orderly release
            sys.exit(0)
        pids.append(int(line))
"""


class Reaper:
    """Guards process ids for the lifetime of this process (the pipe's write end)."""

    def __init__(self) -> None:
        read_end, write_end = os.pipe()  # not inheritable (PEP 446): only the reaper gets read_end
        self._process = subprocess.Popen([sys.executable, "-c", _REAPER, str(read_end)], pass_fds=(read_end,),
                                         start_new_session=True, stdin=subprocess.DEVNULL)
        os.close(read_end)
        self._pipe: int | None = write_end
        self._guarded: set[int] = set()
        self._lock = threading.Lock()

    def guard(self, pids: list[int]) -> None:
        """Kill ``pids`` too if this process dies (ids already guarded are ignored)."""
        with self._lock:
            new = [pid for pid in pids if pid not in self._guarded]
            if self._pipe is None or not new:
                return
            self._guarded.update(new)
            os.write(self._pipe, "".join(f"{pid}\n" for pid in new).encode())
        logger.debug("reaper %d guards processes %s", self._process.pid, new)

    def guard_while(self, running: Callable[[], bool], children: Callable[[], list[int]],
                    every_s: float = 0.5) -> threading.Thread:
        """Guard every id ``children()`` returns, polling until ``running()`` is False.

        For processes started by code we do not control (vLLM's start-up): the
        ones it spawns are guarded as they appear, not only once it returns.
        """
        def poll() -> None:
            while running():
                self.guard(children())
                time.sleep(every_s)
            self.guard(children())

        thread = threading.Thread(target=poll, name="reaper-poll", daemon=True)
        thread.start()
        return thread

    @property
    def pid(self) -> int:
        """The reaper's own process id (never guarded)."""
        return self._process.pid

    @property
    def guarded(self) -> list[int]:
        with self._lock:
            return sorted(self._guarded)

    def release(self) -> None:
        """Stop guarding (call after stopping the helpers yourself); safe to call twice."""
        with self._lock:
            if self._pipe is None:
                return
            os.write(self._pipe, b"q\n")
            os.close(self._pipe)
            self._pipe = None
        self._process.wait(timeout=30)
