"""Kill helper processes when the process that started them dies, however it dies.

vLLM's engine core runs in spawned processes that do not watch their parent: a
worker or server that is SIGKILLed (or exits without closing the engine) would
leave them running, holding gigabytes. ``start_reaper`` starts a tiny process
that waits on a pipe from its parent; when the parent dies the pipe closes and
the reaper kills the given processes. An orderly stop writes one byte first,
and the reaper leaves them alone.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys

logger = logging.getLogger(__name__)

_REAPER = """
import os, signal, sys
if os.read(int(sys.argv[1]), 1) == b"":
    for pid in sys.argv[2:]:
        try:
            os.kill(int(pid), signal.SIGKILL)
        except OSError:
            pass
"""


def start_reaper(pids: list[int]) -> tuple[subprocess.Popen, int]:
    """Start the reaper of ``pids``; returns it and the pipe's write end.

    Keep the write end open for as long as the processes should live. To stop
    them yourself, stop them, then ``os.write(fd, b"q")``, close ``fd`` and wait
    for the reaper.
    """
    read_end, write_end = os.pipe()  # not inheritable (PEP 446): only the reaper gets read_end
    reaper = subprocess.Popen([sys.executable, "-c", _REAPER, str(read_end), *map(str, pids)],
                              pass_fds=(read_end,), start_new_session=True, stdin=subprocess.DEVNULL)
    os.close(read_end)
    logger.debug("reaper %d guards processes %s", reaper.pid, pids)
    return reaper, write_end
