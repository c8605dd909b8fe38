"""One serving process per TUFT_HOME: the lock of tuft_project.home_lock (no Django needed)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tuft_project.home_lock import HomeLocked, lock_home

HOLDER = """
import sys, time
from pathlib import Path
from tuft_project.home_lock import lock_home
lock_home(Path(sys.argv[1]))
print("locked", flush=True)
sys.stdin.read()  # hold the lock until the test closes our stdin
"""


def test_a_second_process_is_refused_until_the_first_exits(tmp_path: Path) -> None:
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path)], cwd=ROOT,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with pytest.raises(HomeLocked, match=f"pid {holder.pid}"):
            lock_home(tmp_path)
    finally:
        holder.communicate(timeout=30)  # closes stdin: the holder exits, the kernel drops its lock
    lock_home(tmp_path)
    lock_home(tmp_path)  # taking a lock this process holds is a no-op
