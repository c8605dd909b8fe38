"""scripts/install.sh (run by serve.sh and test.sh) skips reinstalling when nothing changed."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT

FILES = ("requirements.txt", "requirements-dev.txt", "pyproject.toml")


def _stamp(repo: Path, torch: str) -> str:
    version = subprocess.run([sys.executable, "--version"], capture_output=True, text=True).stdout
    vllm = os.environ.get("TUFT_WITH_VLLM", "0")  # install.sh's stamp names the opt-in vLLM install too
    data = version + f"torch {torch} vllm {vllm}\n" + "".join((repo / f).read_text() for f in FILES)
    return hashlib.sha256(data.encode()).hexdigest()


def test_install_skips_when_requirements_are_unchanged(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    shutil.copy(ROOT / "scripts" / "install.sh", repo / "scripts" / "install.sh")
    for name in FILES:
        shutil.copy(ROOT / name, repo / name)
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    # A stand-in environment: this interpreter and a `tuft` command, as an earlier install leaves them.
    (venv / "bin" / "python").symlink_to(sys.executable)
    (venv / "bin" / "activate").write_text(f'export PATH="{venv / "bin"}:$PATH"\n')
    (venv / "bin" / "tuft").write_text("#!/bin/sh\n")
    (venv / "bin" / "tuft").chmod(0o755)
    torch = "0.0.0-not-a-version"  # an install attempt fails at once instead of downloading
    env = {**os.environ, "TUFT_VENV": str(venv), "TUFT_TORCH_VERSION": torch, "PIP_NO_INDEX": "1",
           "PIP_FIND_LINKS": str(tmp_path)}
    (venv / ".tuft-install-stamp").write_text(_stamp(repo, torch) + "\n")

    quiet = subprocess.run(["bash", "scripts/install.sh"], cwd=repo, env=env, capture_output=True, text=True,
                           timeout=60)
    assert quiet.returncode == 0 and quiet.stdout == "" and quiet.stderr == ""

    with open(repo / "requirements.txt", "a") as f:
        f.write("# changed\n")
    changed = subprocess.run(["bash", "scripts/install.sh"], cwd=repo, env=env, capture_output=True, text=True,
                             timeout=120)
    assert "installing TuFT" in changed.stdout
    assert changed.returncode != 0  # the stand-in torch version cannot be installed
    assert (venv / ".tuft-install-stamp").read_text().strip() != _stamp(repo, torch)  # not marked done
