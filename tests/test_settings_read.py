"""Every documented setting is listed in docs/operators.md and actually read, in both modes.

A setting that is documented but read nowhere silently does nothing (the seq-gap
timeout once was). The sources are scanned with ``tokenize``, so a name in a
comment or docstring does not count as reading it.
"""

from __future__ import annotations

import functools
import io
import os
import re
import tokenize
from pathlib import Path
from typing import Any

import pytest

from dispatch.embedded import LaneLimits
from tests.conftest import write_models_yaml
from workers.runtime import WorkerRuntime

ROOT = Path(__file__).resolve().parent.parent
SETTING = re.compile(r"\b(TUFT_[A-Z0-9_]*[A-Z0-9]|REDIS_URL|DATABASE_URL)\b")
SETTINGS_PY = ROOT / "tuft_project" / "settings.py"
# Settings of the test suite itself, read by the tests that honour them.
TEST_SETTINGS = {"TUFT_UPDATE_SCREENSHOTS": ROOT / "tests" / "browser" / "conftest.py"}


def documented() -> set[str]:
    texts = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    return {name for path in texts for name in SETTING.findall(path.read_text())}


def settings_table() -> str:
    text = (ROOT / "docs" / "operators.md").read_text()
    start = text.index("\n## Settings\n")
    end = text.index("\n## ", start + 1)
    return text[start:end]


@functools.cache  # every documented setting looks through the same files
def code_tokens(path: Path) -> list[tokenize.TokenInfo]:
    """Names and string literals of a Python file (comments and docstrings are strings too,
    but a docstring never holds a setting name on its own, which is what counts below)."""
    tokens = tokenize.generate_tokens(io.StringIO(path.read_text()).readline)
    return [t for t in tokens if t.type in (tokenize.NAME, tokenize.STRING)]


SKIPPED_DIRS = {".venv", "tests", "migrations", "bench"}


@functools.cache
def project_python() -> tuple[Path, ...]:
    # os.walk, pruned: the virtual environment in the checkout (CI's .venv) holds tens of
    # thousands of files that an rglob would list before the filter drops them.
    found = []
    for top, dirs, files in os.walk(ROOT):
        dirs[:] = sorted(d for d in dirs if d not in SKIPPED_DIRS | {".git"})
        found += [Path(top) / f for f in sorted(files) if f.endswith(".py")]
    return tuple(found)


def reads(name: str) -> list[str]:
    """Where ``name`` is read: ``settings.NAME`` or ``getattr(settings, "NAME")``, an
    environment lookup of ``"NAME"``, or ``$NAME`` in a shell script.

    In settings.py, ``NAME = os.environ.get("NAME")`` alone does not count: the
    value stored must be used, there or elsewhere.
    """
    found = []
    for path in [*project_python(), *([TEST_SETTINGS[name]] if name in TEST_SETTINGS else [])]:
        tokens = code_tokens(path)
        names = [t for t in tokens if t.type == tokenize.NAME and t.string == name]
        strings = [t for t in tokens if t.type == tokenize.STRING and t.string.strip("\"'") == name]
        if path == SETTINGS_PY:
            stored = bool(names)
            used = len(names) > 1 if stored else bool(strings)  # an assignment, then a use
        else:
            used = bool(names or strings)
        if used:
            found.append(str(path.relative_to(ROOT)))
    for path in [*ROOT.glob("scripts/*.sh"), *ROOT.glob("docker/*"), ROOT / "Dockerfile"]:
        if re.search(r"\$\{?%s\b" % name, path.read_text()):
            found.append(str(path.relative_to(ROOT)))
    return found


def test_every_documented_setting_is_in_the_operators_table() -> None:
    missing = sorted(documented() - set(SETTING.findall(settings_table())))
    assert not missing, f"documented but missing from docs/operators.md ## Settings: {missing}"


def test_every_documented_setting_is_read_somewhere() -> None:
    names = set(SETTING.findall(settings_table()))
    assert {"TUFT_SEQ_GAP_TIMEOUT_S", "TUFT_TRAIN_BATCH_MAX", "REDIS_URL"} <= names
    unread = [name for name in sorted(names) if not reads(name)]
    assert not unread, f"documented settings read nowhere: {unread}"


@pytest.fixture
def redis_mode(settings: Any, tmp_path: Path, tiny_model_dir: Path) -> Any:
    """Distributed-mode settings for an in-process WorkerRuntime (Redis is never dialled)."""
    settings.TUFT_MODEL_CONFIG = write_models_yaml(tmp_path / "models.yaml", tiny_model_dir)
    settings.REDIS_URL = "redis://127.0.0.1:6379/0"
    return settings


def test_the_seq_gap_timeout_is_read_in_both_modes(redis_mode: Any) -> None:
    redis_mode.TUFT_SEQ_GAP_TIMEOUT_S = 7.5
    assert LaneLimits.from_settings().gap_timeout_s == 7.5  # embedded lanes
    assert WorkerRuntime("settings-check").gap_timeout_s == 7.5  # Redis-mode worker
