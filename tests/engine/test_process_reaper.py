"""The reaper kills vLLM's engine processes when their parent dies, even by SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# A parent that starts a long-lived helper (standing in for vLLM's engine core),
# guards it with a reaper, prints the helper's pid and then waits (or stops it in order).
PARENT = """
import os, subprocess, sys, time
sys.path.insert(0, sys.argv[1])
from engine.process_reaper import Reaper
reaper = Reaper()
first = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
reaper.guard([first.pid])
# A helper started later, found by polling as vLLM's start-up spawns its processes.
second = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
polled = reaper.guard_while(lambda: False, lambda: [second.pid])
polled.join()
print(first.pid, second.pid, reaper.pid, flush=True)
if sys.argv[2] == "orderly":
    reaper.release()
    print("reaper left", flush=True)
time.sleep(600)
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (dead, not yet reaped by its new parent) counts as dead.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def _wait_dead(pid: int, timeout: float = 60) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.2)
    return False


def test_a_sigkilled_parent_takes_its_helpers_with_it() -> None:
    parent = subprocess.Popen([sys.executable, "-c", PARENT, str(ROOT), "crash"], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    first, second, reaper = map(int, parent.stdout.readline().split())
    assert _alive(first) and _alive(second)
    parent.send_signal(signal.SIGKILL)
    parent.wait(timeout=30)
    assert _wait_dead(first) and _wait_dead(second), "a helper outlived its SIGKILLed parent"
    assert _wait_dead(reaper)


def test_an_orderly_stop_leaves_the_helpers_to_their_owner() -> None:
    parent = subprocess.Popen([sys.executable, "-c", PARENT, str(ROOT), "orderly"], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    helpers: list[int] = []
    try:
        helpers = list(map(int, parent.stdout.readline().split()))[:2]
        assert parent.stdout.readline().strip() == "reaper left"
        assert all(_alive(pid) for pid in helpers), "an orderly release must not kill anything"
    finally:
        parent.kill()
        parent.wait(timeout=30)
        for pid in helpers:
            os.kill(pid, signal.SIGKILL)
