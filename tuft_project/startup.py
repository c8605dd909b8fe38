"""What a serving process does once at start-up (not on every manage.py command)."""

from __future__ import annotations

import logging
import threading
import time

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import close_old_connections
from django.urls import get_resolver

from dispatch.registry import get_dispatcher
from sessions_app.actions import do_expire_silent_sessions
from training_app.checkpoint_deletion import remove_leftover_trash
from training_app.recovery import do_delete_expired_checkpoints, recover_after_restart
from training_app.retention import do_delete_old_operations
from tuft_project import gc_freeze
from tuft_project.home_lock import HomeLocked, lock_home
from tuft_project.runtime import get_config

logger = logging.getLogger(__name__)


def on_server_start() -> None:
    """Check models.yaml, recover from the previous process, start housekeeping.

    Recovery closes the previous process's sessions, so it runs only under the
    home's serving lock (taken already by ``tuft``; taken here for
    ``manage.py runserver`` and a bare ``daphne tuft_project.asgi:application``).
    """
    try:
        lock_home(settings.TUFT_HOME)
    except HomeLocked as exc:
        raise ImproperlyConfigured(str(exc)) from None

    config = get_config()  # a bad models.yaml fails here, at start-up, with a clear message
    logger.info("serving %d model(s): %s", len(config.models), ", ".join(m.model_name for m in config.models))

    recover_after_restart()
    remove_leftover_trash()
    get_dispatcher()
    threading.Thread(target=_housekeeping, name="tuft-housekeeping", daemon=True).start()
    get_resolver().url_patterns  # imports every view now, so that their modules are frozen below
    gc_freeze.enable()  # full GC passes stop walking start-up's objects (tuft_project.gc_freeze)


def _housekeeping() -> None:
    """Expire silent sessions, checkpoints past their TTL and old operations, once a minute-ish."""
    interval = min(60.0, max(1.0, settings.TUFT_SESSION_TIMEOUT_S / 4))
    while True:
        time.sleep(interval)
        try:
            close_old_connections()
            do_expire_silent_sessions(settings.TUFT_SESSION_TIMEOUT_S)
            do_delete_expired_checkpoints()
            do_delete_old_operations()
        except Exception:
            logger.exception("housekeeping failed; retrying next round")
