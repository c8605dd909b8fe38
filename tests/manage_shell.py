"""One long-lived ``manage.py`` process per live test server, running commands sent on stdin.

Every ``python manage.py …`` start-up imports torch (through the apps' modules):
about 5 s of CPU, more than most commands the tests run. ``LiveServer.manage``
sends its commands here instead: the process is ``manage.py shell`` started once
with the server's environment, and each command is Django's ``call_command``
with the same arguments, parsed by the same command class as on the command
line. The database connections are closed after every command, as a process of
its own would on exit.

Protocol: one JSON list of arguments per line on stdin; one line
``RESULT_MARK + JSON {"ok", "stdout", "stderr"}`` per command on stdout (other lines there,
say from a logging handler, are not ours and are skipped).
"""

from __future__ import annotations

import contextlib
import io
import json
import queue
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path

RESULT_MARK = "\x00tuft-manage-result "


def serve() -> None:
    from django.core.management import call_command
    from django.db import connections

    real_stdout = sys.stdout
    for line in sys.stdin:
        args = json.loads(line)
        output, errors = io.StringIO(), io.StringIO()
        ok = True
        try:
            with contextlib.redirect_stdout(output), contextlib.redirect_stderr(errors):
                call_command(*args, stdout=output, stderr=errors)
        except SystemExit as exc:  # what the command's process would exit with
            ok = exc.code in (None, 0)
        except BaseException:  # noqa: BLE001 - CommandError...: the caller sees the traceback
            ok = False
            errors.write(traceback.format_exc())
        finally:
            connections.close_all()
        result = {"ok": ok, "stdout": output.getvalue(), "stderr": errors.getvalue()}
        real_stdout.write(RESULT_MARK + json.dumps(result) + "\n")
        real_stdout.flush()


class ManageShell:
    """The test side: start the process on first use, send a command, wait (bounded) for its result."""

    def __init__(self, root: Path, env: dict[str, str], log_path: Path) -> None:
        self.root, self.env, self.log_path = root, dict(env), log_path
        self.process: subprocess.Popen | None = None
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.lock = threading.Lock()

    def run(self, args: tuple[str, ...], env: dict[str, str], timeout: float) -> str:
        """Run one command with ``env``; return its standard output, or raise with its errors.

        The process restarts first if ``env`` changed since it started.
        """
        with self.lock:
            if env != self.env:
                self.close()
                self.env = dict(env)
            self.start()
            assert self.process is not None and self.process.stdin is not None
            self.process.stdin.write(json.dumps(list(args)) + "\n")
            self.process.stdin.flush()
            deadline = time.monotonic() + timeout
            while True:
                try:
                    line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    self.close()
                    raise RuntimeError(f"manage.py {' '.join(args)} did not finish in {timeout} s "
                                       f"(log: {self.log_path})") from None
                if line is None:
                    self.close()
                    raise RuntimeError(f"the manage.py process exited during {' '.join(args)} "
                                       f"(log: {self.log_path}):\n{self.log_path.read_text(errors='replace')[-3000:]}")
                if line.startswith(RESULT_MARK):
                    result = json.loads(line[len(RESULT_MARK):])
                    if not result["ok"]:
                        raise RuntimeError(f"manage.py {' '.join(args)} failed:\n{result['stdout']}\n{result['stderr']}")
                    return str(result["stdout"])

    def start(self) -> None:
        """Start the process unless it runs (it takes seconds: start it early, alongside the server)."""
        if self.process is not None and self.process.poll() is None:
            return
        self.lines = queue.Queue()
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, str(self.root / "manage.py"), "shell", "-c",
                 "from tests.manage_shell import serve; serve()"],
                env=self.env, cwd=self.root, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True,
            )
        threading.Thread(target=self._read, args=(self.process, self.lines), daemon=True).start()

    @staticmethod
    def _read(process: subprocess.Popen, lines: queue.Queue[str | None]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line.rstrip("\n"))
        lines.put(None)

    def close(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            assert self.process.stdin is not None
            try:
                self.process.stdin.close()  # end of input: serve() returns and the process exits
                self.process.wait(timeout=15)
            except (OSError, subprocess.TimeoutExpired):
                self.process.kill()
                self.process.wait(timeout=15)
        self.process = None
