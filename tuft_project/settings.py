"""Django settings for TuFT.

Everything a deployment changes comes from the environment:

  TUFT_HOME            data directory (default: ./var in the checkout)
  TUFT_MODEL_CONFIG    models.yaml (default: $TUFT_HOME/models.yaml, made by `manage.py quickstart`)
  TUFT_CHECKPOINT_DIR  checkpoint directory (default: $TUFT_HOME/checkpoints)
  DATABASE_URL         e.g. postgres://user@127.0.0.1:5432/tuft (default: SQLite in $TUFT_HOME)
  REDIS_URL            set to dispatch operations to RQ workers instead of the embedded worker
  TUFT_SECRET_KEY, TUFT_DEBUG, TUFT_ALLOWED_HOSTS
"""

from __future__ import annotations

import os
from pathlib import Path

import dj_database_url

BASE_DIR = Path(__file__).resolve().parent.parent
TUFT_HOME = Path(os.environ.get("TUFT_HOME", BASE_DIR / "var")).expanduser().resolve()
TUFT_MODEL_CONFIG = Path(os.environ.get("TUFT_MODEL_CONFIG", TUFT_HOME / "models.yaml")).expanduser()
TUFT_CHECKPOINT_DIR = Path(os.environ.get("TUFT_CHECKPOINT_DIR", TUFT_HOME / "checkpoints")).expanduser().resolve()
# Sessions with no heartbeat for this long are closed and their adapters released.
TUFT_SESSION_TIMEOUT_S = float(os.environ.get("TUFT_SESSION_TIMEOUT_S", "600"))
# How long retrieve_future holds a request open before answering try_again (< 45 s SDK timeout).
TUFT_LONG_POLL_S = float(os.environ.get("TUFT_LONG_POLL_S", "25"))
# Long polls wake on completion events; one shared sweep this often also catches a
# completion whose event never reached this process (training_app.futures).
TUFT_LONG_POLL_SWEEP_S = float(os.environ.get("TUFT_LONG_POLL_SWEEP_S", "2"))
# On SIGTERM the server waits this long for running operations to finish (tuft_project.shutdown).
TUFT_SHUTDOWN_TIMEOUT_S = float(os.environ.get("TUFT_SHUTDOWN_TIMEOUT_S", "30"))
# Sample requests one tenant may have queued or running before asample answers 429
# (the SDK then backs off and resubmits the same request; nothing is dropped).
TUFT_MAX_PENDING_SAMPLES = int(os.environ.get("TUFT_MAX_PENDING_SAMPLES", "256"))
# Largest number of data per forward_backward request advertised to the SDK, which
# splits bigger batches into chunks of at most this many (see sessions_app.views).
TUFT_FWDBWD_MAX_CHUNK_LEN = int(os.environ.get("TUFT_FWDBWD_MAX_CHUNK_LEN", "256"))
# Lifetime of the signed download URLs of external_weights checkpoints.
TUFT_DOWNLOAD_URL_TTL_S = int(os.environ.get("TUFT_DOWNLOAD_URL_TTL_S", "3600"))
REDIS_URL = os.environ.get("REDIS_URL", "")

SECRET_KEY = os.environ.get("TUFT_SECRET_KEY", "tuft-dev-insecure-change-me")
DEBUG = os.environ.get("TUFT_DEBUG", "0") == "1"
ALLOWED_HOSTS = os.environ.get("TUFT_ALLOWED_HOSTS", "*").split(",")

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "django_rq",
    "sessions_app",
    "training_app",
    "sampling_app",
    "channels",
    "dashboard_app",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "tuft_project.urls"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]
WSGI_APPLICATION = "tuft_project.wsgi.application"
ASGI_APPLICATION = "tuft_project.asgi.application"

_sqlite_path = TUFT_HOME / "db.sqlite3"
DATABASES = {
    "default": dj_database_url.config(default=f"sqlite:///{_sqlite_path}", conn_max_age=0),
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # WAL lets the API read while the worker writes; IMMEDIATE transactions and a
    # long timeout turn write contention into waiting instead of "database is locked".
    DATABASES["default"]["OPTIONS"] = {
        "timeout": 30,
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }

# Live dashboard events (dashboard_app.live). In-memory is enough when the worker
# runs inside the server process (embedded); RQ workers in other processes publish
# through Redis, which needs the channels-redis package.
def _configured_redis_url() -> str:
    """Redis of the deployment: models.yaml's persistence block wins over REDIS_URL
    (the same rule as training_app.queues.get_backend). A models.yaml that cannot
    be read here is reported, clearly, by the server's start-up check instead."""
    try:
        import yaml

        persistence = (yaml.safe_load(TUFT_MODEL_CONFIG.read_text()) or {}).get("persistence") or {}
        if persistence.get("mode") == "redis_url" and persistence.get("redis_url"):
            return str(persistence["redis_url"])
    except (OSError, ValueError, AttributeError, yaml.YAMLError):
        pass
    return REDIS_URL


_LIVE_REDIS_URL = _configured_redis_url()
CHANNEL_LAYERS = (
    {"default": {"BACKEND": "channels_redis.core.RedisChannelLayer", "CONFIG": {"hosts": [_LIVE_REDIS_URL]}}}
    if _LIVE_REDIS_URL else {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
)
# Web side (admin and dashboard). Staff log in through the admin; tenants with an API key.
LOGIN_URL = "/admin/login/"
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
# Behind TLS set TUFT_SECURE_COOKIES=1 (cookies only over https) and, if a proxy
# changes the host, TUFT_CSRF_TRUSTED_ORIGINS=https://tuft.example.org.
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = os.environ.get("TUFT_SECURE_COOKIES", "0") == "1"
CSRF_TRUSTED_ORIGINS = [o for o in os.environ.get("TUFT_CSRF_TRUSTED_ORIGINS", "").split(",") if o]

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
STATIC_URL = "static/"
STATIC_ROOT = TUFT_HOME / "static"
STATICFILES_DIRS = [BASE_DIR / "static"] if (BASE_DIR / "static").exists() else []
DATA_UPLOAD_MAX_MEMORY_SIZE = 64 * 1024 * 1024  # forward_backward batches can be large

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["sessions_app.authentication.ApiKeyAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["sessions_app.permissions.IsTenant"],
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser", "training_app.parsers.ProtobufParser"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "EXCEPTION_HANDLER": "tuft_project.exceptions.api_exception_handler",
    "UNAUTHENTICATED_USER": None,
}

# django-rq's queues (and dashboard at /django-rq/). Distributed mode also adds
# them at start-up (training_app.queues.register_queues) when Redis comes from
# models.yaml rather than REDIS_URL; embedded mode has none.
_RQ_NAMESPACE = os.environ.get("TUFT_REDIS_NAMESPACE", "tuft")
RQ_QUEUES: dict[str, dict[str, object]] = {
    f"{_RQ_NAMESPACE}-{lane}": {"URL": REDIS_URL, "DEFAULT_TIMEOUT": -1, "SERIALIZER": "rq.serializers.JSONSerializer"}
    for lane in ("train", "sample")
} if REDIS_URL else {}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": os.environ.get("TUFT_LOG_LEVEL", "INFO")},
    "loggers": {"django.channels.server": {"level": "WARNING"}, "daphne": {"level": "WARNING"}},
}
