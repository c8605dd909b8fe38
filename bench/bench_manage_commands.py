"""What one management command costs the test suite: its own ``manage.py`` process, or a command
sent to the live server's long-lived one (tests/manage_shell.py, what ``LiveServer.manage`` does).

Interleaved in one run (process, shell, process, shell...) against one live server, so shared
load hits both alike. Prints wall and CPU seconds per command and their ratios.

    python bench/bench_manage_commands.py --rounds 4
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def children_cpu() -> float:
    usage = os.times()
    return usage.children_user + usage.children_system


def process_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()

    from engine.tiny_model import build_tiny_model
    from tests.conftest import start_server, write_models_yaml

    with tempfile.TemporaryDirectory() as tmp:
        model = build_tiny_model(Path(tmp) / "tiny-qwen3")
        home = Path(tmp) / "home"
        home.mkdir()
        server = start_server(home, write_models_yaml(home / "models.yaml", model))
        try:
            server.manage("check")  # the shell is up: its start-up is a once-per-server cost
            assert server.shell is not None and server.shell.process is not None
            shell_pid = server.shell.process.pid
            results: dict[str, list[tuple[float, float]]] = {"process": [], "shell": []}
            for i in range(args.rounds):
                started, cpu = time.monotonic(), children_cpu()
                out = subprocess.run([sys.executable, str(ROOT / "manage.py"), "create_tenant", f"p{i}"],
                                     env=server.env, cwd=ROOT, capture_output=True, text=True, timeout=300)
                assert out.returncode == 0, out.stderr
                results["process"].append((time.monotonic() - started, children_cpu() - cpu))
                started, cpu = time.monotonic(), process_cpu(shell_pid)
                server.create_tenant(f"s{i}")
                results["shell"].append((time.monotonic() - started, process_cpu(shell_pid) - cpu))
        finally:
            server.stop()
    wall = {k: statistics.median(w for w, _ in v) for k, v in results.items()}
    cpu = {k: statistics.median(c for _, c in v) for k, v in results.items()}
    for k in results:
        print(f"{k:8s} create_tenant: median wall {wall[k]:.2f} s, CPU {cpu[k]:.2f} s ({args.rounds} runs)")
    print(f"process/shell ratio: wall {wall['process'] / max(wall['shell'], 1e-3):.0f}x, "
          f"CPU {cpu['process'] / max(cpu['shell'], 1e-3):.0f}x")


if __name__ == "__main__":
    main()
