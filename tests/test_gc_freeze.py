"""tuft_project.gc_freeze: only a process that opted in freezes, and then everything alive is frozen.

Run in a child interpreter: freezing the test process's own objects would keep
the garbage of every later test from being collected.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

SCRIPT = """
import gc
from tuft_project import gc_freeze

class Node:
    pass

gc_freeze.freeze_long_lived("a model load")  # not enabled: the collector is left alone
assert gc.get_freeze_count() == 0, gc.get_freeze_count()

garbage = Node(); garbage.me = garbage; del garbage  # a cycle nobody can reach
kept = Node(); kept.me = kept
gc_freeze.enable()
frozen = gc.get_freeze_count()
assert frozen > 1000, frozen  # the interpreter's and the imports' objects
assert not any(type(o) is Node for o in gc.get_objects()), "a live object was left for full passes to walk"

leftover = Node(); leftover.me = leftover; del leftover
gc_freeze.freeze_long_lived("a sampler start")  # collects first: garbage is never frozen
assert gc.get_freeze_count() == frozen, (gc.get_freeze_count(), frozen)
print("ok")
"""


def test_only_an_enabled_process_freezes_and_never_its_garbage() -> None:
    done = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
