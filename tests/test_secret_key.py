"""The secret key generated per TUFT_HOME and the weak-key rule (no Django needed)."""

from __future__ import annotations

import concurrent.futures
from pathlib import Path

from tuft_project.secret_key import KEY_FILE, key_is_weak, load_or_create_secret_key


def test_generated_once_private_and_stable(tmp_path: Path) -> None:
    home = tmp_path / "new-home"
    key = load_or_create_secret_key(home)
    assert not key_is_weak(key)
    assert (home / KEY_FILE).stat().st_mode & 0o777 == 0o600
    assert load_or_create_secret_key(home) == key
    assert load_or_create_secret_key(tmp_path / "other-home") != key


def test_processes_starting_together_agree_on_one_key(tmp_path: Path) -> None:
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        keys = set(pool.map(lambda _: load_or_create_secret_key(tmp_path), range(16)))
    assert len(keys) == 1


def test_weak_keys() -> None:
    for weak in ("tuft-dev-insecure-change-me", "django-insecure-" + "x1y2z3" * 10, "short-key", "a" * 64):
        assert key_is_weak(weak), weak
    assert not key_is_weak("Zx8-q1LrT0b9v_Km3Wn7Yp2Hs5Jd4Ft6Gc0")
