"""Django settings for TuFT.

Everything a deployment changes comes from the environment:

  TUFT_HOME            data directory (default: ./var in the checkout)
  TUFT_MODEL_CONFIG    models.yaml (default: $TUFT_HOME/models.yaml, made by `manage.py quickstart`)
  TUFT_CHECKPOINT_DIR  checkpoint directory (default: $TUFT_HOME/checkpoints)
  DATABASE_URL         e.g. postgres://user@127.0.0.1:5432/tuft (default: SQLite in $TUFT_HOME)
  REDIS_URL            set to dispatch operations to RQ workers instead of the embedded worker
  TUFT_SECRET_KEY      overrides the key generated into $TUFT_HOME/secret_key
  TUFT_ENV             "production" refuses weak secret keys (default "development")
  TUFT_ALLOWED_HOSTS   extra host names (comma-separated) besides loopback and the bound address
  TUFT_DEBUG
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from tuft_project.secret_key import SecretKeyError, key_is_weak, load_or_create_secret_key

BASE_DIR = Path(__file__).resolve().parent.parent


def _share_dir() -> Path:
    """Where the dashboard's ``templates/`` and ``static/`` trees are.

    In a checkout (``manage.py`` beside the packages) they are in the tree. An installed wheel
    carries them as data files under ``<prefix>/share/tuft`` (see pyproject.toml): ``sys.prefix``
    for a normal or virtualenv install, or the prefix the packages were installed under
    (``pip install --prefix``/``--user``: ``<prefix>/lib/pythonX.Y/site-packages``).
    """
    if (BASE_DIR / "manage.py").exists():
        return BASE_DIR
    for prefix in (Path(sys.prefix), BASE_DIR.parents[2]):
        if (prefix / "share" / "tuft" / "templates").is_dir():
            return prefix / "share" / "tuft"
    raise ImproperlyConfigured(
        f"TuFT's templates are neither beside {BASE_DIR} (a checkout) nor under {sys.prefix}/share/tuft "
        "(an installed wheel): reinstall the package")


SHARE_DIR = _share_dir()
# The data directory: the checkout's var/ when run from a checkout, else ./var (as `tuft --help` says).
_DEFAULT_HOME = BASE_DIR / "var" if SHARE_DIR == BASE_DIR else Path.cwd() / "var"
TUFT_HOME = Path(os.environ.get("TUFT_HOME", _DEFAULT_HOME)).expanduser().resolve()
TUFT_MODEL_CONFIG = Path(os.environ.get("TUFT_MODEL_CONFIG", TUFT_HOME / "models.yaml")).expanduser()
TUFT_CHECKPOINT_DIR = Path(os.environ.get("TUFT_CHECKPOINT_DIR", TUFT_HOME / "checkpoints")).expanduser().resolve()
# Sessions with no heartbeat for this long are closed and their adapters released.
TUFT_SESSION_TIMEOUT_S = float(os.environ.get("TUFT_SESSION_TIMEOUT_S", "600"))
# How long retrieve_future holds a request open before answering try_again (< 45 s SDK timeout).
TUFT_LONG_POLL_S = float(os.environ.get("TUFT_LONG_POLL_S", "25"))
# Long polls wake on completion events; one shared sweep this often also catches a
# completion whose event never reached this process (dispatch.completions).
TUFT_LONG_POLL_SWEEP_S = float(os.environ.get("TUFT_LONG_POLL_SWEEP_S", "2"))
# On SIGTERM the server waits this long for running operations to finish (tuft_project.shutdown).
TUFT_SHUTDOWN_TIMEOUT_S = float(os.environ.get("TUFT_SHUTDOWN_TIMEOUT_S", "30"))
# Sample requests one tenant may have queued or running before asample answers 429
# (the SDK then backs off and resubmits the same request; nothing is dropped).
TUFT_MAX_PENDING_SAMPLES = int(os.environ.get("TUFT_MAX_PENDING_SAMPLES", "256"))
# Largest number of data per forward_backward request advertised to the SDK, which
# splits bigger batches into chunks of at most this many (see sessions_app.views).
TUFT_FWDBWD_MAX_CHUNK_LEN = int(os.environ.get("TUFT_FWDBWD_MAX_CHUNK_LEN", "256"))
# Finished operations (futures, with their request and result) are deleted after
# this many days by housekeeping (training_app.retention); 0 keeps them forever.
TUFT_OPERATION_RETENTION_DAYS = float(os.environ.get("TUFT_OPERATION_RETENTION_DAYS", "7"))
# Scheduling, read by the embedded lanes and by Redis-mode workers (docs/operators.md):
# a seq_id that never arrives is skipped after this long; ready forward/forward_backward
# operations of different runs run as one engine pass of at most TUFT_TRAIN_BATCH_TOKENS
# input tokens and TUFT_TRAIN_BATCH_MAX operations (ready optim_steps: one fused AdamW
# update of at most TUFT_TRAIN_BATCH_MAX runs); queued sample requests go to the sampler in
# batches of at most TUFT_SAMPLE_BATCH_MAX requests / TUFT_SAMPLE_BATCH_TOKENS (prompt + max
# new) tokens.
TUFT_SEQ_GAP_TIMEOUT_S = float(os.environ.get("TUFT_SEQ_GAP_TIMEOUT_S", "60"))
TUFT_TRAIN_BATCH_TOKENS = int(os.environ.get("TUFT_TRAIN_BATCH_TOKENS", "8192"))
TUFT_TRAIN_BATCH_MAX = int(os.environ.get("TUFT_TRAIN_BATCH_MAX", "16"))
TUFT_SAMPLE_BATCH_TOKENS = int(os.environ.get("TUFT_SAMPLE_BATCH_TOKENS", "8192"))
TUFT_SAMPLE_BATCH_MAX = int(os.environ.get("TUFT_SAMPLE_BATCH_MAX", "4"))
# Lifetime of the signed download URLs of external_weights checkpoints.
TUFT_DOWNLOAD_URL_TTL_S = int(os.environ.get("TUFT_DOWNLOAD_URL_TTL_S", "3600"))
# Admission limits (docs/api.md "Limits"): every request's cost is bounded before
# anything is allocated or queued. The first two can be overridden per tenant in
# its Quota (sessions_app.admission); the others are hard limits of the server.
TUFT_MAX_NUM_SAMPLES = int(os.environ.get("TUFT_MAX_NUM_SAMPLES", "128"))
TUFT_MAX_FWDBWD_TOKENS = int(os.environ.get("TUFT_MAX_FWDBWD_TOKENS", "131072"))
# Elements of all loss_fn_inputs tensors of one forward_backward (as sent: a sparse
# tensor counts its full dense shape, which is what it would be expanded to).
TUFT_MAX_FWDBWD_TENSOR_ELEMENTS = int(os.environ.get("TUFT_MAX_FWDBWD_TENSOR_ELEMENTS", str(4 * 1024 * 1024)))
# Largest request body, before and after zstd decompression (413 beyond it).
TUFT_MAX_BODY_BYTES = int(os.environ.get("TUFT_MAX_BODY_BYTES", str(64 * 1024 * 1024)))
REDIS_URL = os.environ.get("REDIS_URL", "")
# Threads that run the API's synchronous views, each request's whole middleware
# chain and view in one call (tuft_project.asgi_handler); more requests queue.
# Few on purpose: the views are Python under one GIL, so more threads add no
# throughput, and with 16 runnable at once (a burst of submissions or
# heartbeats) the event loop waited its turn for the GIL behind all of them
# (docs/performance.md, "Control plane under 100 concurrent clients": ready-result
# p99 at 100 clients 81-266 ms with 4 across six runs; main with 16: 142-177 ms).
TUFT_API_THREADS = int(os.environ.get("TUFT_API_THREADS", "4"))
# Longest an OpenAI-compatible request (/oai/api/v1) waits for its samples before answering 504.
TUFT_OAI_TIMEOUT_S = float(os.environ.get("TUFT_OAI_TIMEOUT_S", "600"))
# Who may read /metrics besides staff (monitoring_app.views): a scraper with this bearer
# token, and loopback clients unless TUFT_METRICS_LOOPBACK=0 (behind a local reverse proxy).
TUFT_METRICS_TOKEN = os.environ.get("TUFT_METRICS_TOKEN", "")
TUFT_METRICS_LOOPBACK = os.environ.get("TUFT_METRICS_LOOPBACK", "1") == "1"

# "production" makes every process (tuft, manage.py, workers) refuse a weak or
# well-known secret key; `tuft` also treats a non-loopback --host as production.
TUFT_ENV = os.environ.get("TUFT_ENV", "development")
if TUFT_ENV not in ("development", "production"):
    raise ImproperlyConfigured(f"TUFT_ENV must be 'development' or 'production', not {TUFT_ENV!r}")
try:
    SECRET_KEY = os.environ.get("TUFT_SECRET_KEY") or load_or_create_secret_key(TUFT_HOME)
except SecretKeyError as exc:
    raise ImproperlyConfigured(str(exc)) from None
if TUFT_ENV == "production" and key_is_weak(SECRET_KEY):
    raise ImproperlyConfigured(
        "TUFT_SECRET_KEY is a well-known or weak key (TUFT_ENV=production): unset it to use the key "
        f"generated in {TUFT_HOME}, or set a random one of at least 32 characters"
    )
DEBUG = os.environ.get("TUFT_DEBUG", "0") == "1"


def _allowed_hosts() -> list[str]:
    """Host headers we answer: loopback, the address `tuft` binds, and TUFT_ALLOWED_HOSTS.

    Never ``*`` by default: absolute URLs we hand out (download links) are built
    from the Host header, so an arbitrary one would make them point elsewhere.
    """
    hosts = ["localhost", "127.0.0.1", "[::1]"]
    bind = os.environ.get("TUFT_BIND_HOST", "")  # set by `tuft` (tuft_project.cli)
    if bind in ("0.0.0.0", "::"):
        # Every interface: the machine's own names and addresses.
        try:
            name, aliases, addresses = socket.gethostbyname_ex(socket.gethostname())
            hosts += [name, *aliases, *addresses, socket.getfqdn()]
        except OSError:
            hosts.append(socket.gethostname())
    elif bind:
        hosts.append(f"[{bind}]" if ":" in bind else bind)
    hosts += [h.strip() for h in os.environ.get("TUFT_ALLOWED_HOSTS", "").split(",") if h.strip()]
    return list(dict.fromkeys(hosts))


ALLOWED_HOSTS = _allowed_hosts()

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
    "openai_app",
    "monitoring_app",
    "channels",
    "dashboard_app",
]

MIDDLEWARE = [
    "monitoring_app.middleware.RequestMetricsMiddleware",  # first: counts and times every answer
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
        "DIRS": [SHARE_DIR / "templates"],
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
# An empty DATABASE_URL (e.g. `DATABASE_URL=` in a compose file) means "not set", as
# for the other settings here; dj_database_url.config would return no database at all.
_database_url = os.environ.get("DATABASE_URL") or f"sqlite:///{_sqlite_path}"
try:
    DATABASES = {"default": dj_database_url.parse(_database_url, conn_health_checks=True)}
except ValueError as exc:
    raise ImproperlyConfigured(f"DATABASE_URL is not a database URL this server can use: {exc}") from None
_is_sqlite = DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3"
# Seconds a thread keeps its database connection (checked before reuse). Every thread
# that touches the database is long-lived (the API's thread pool, the long poll's
# readers, the lanes), so on SQLite, where a connection is just an open file, one is
# kept rather than opened for every request. PostgreSQL defaults to 0 (closed after
# each request): a kept connection per thread and process adds up against max_connections.
DATABASES["default"]["CONN_MAX_AGE"] = float(os.environ.get("TUFT_DB_CONN_MAX_AGE", "60" if _is_sqlite else "0"))
if _is_sqlite:
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
    (the same rule as dispatch.queues.get_backend). A models.yaml that cannot
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
# django-rq's "Queues" admin section only where there are RQ queues (not in embedded mode).
RQ_SHOW_ADMIN_LINK = bool(_LIVE_REDIS_URL)
# Web side (admin and dashboard). Staff log in through the admin; tenants with an API key.
LOGIN_URL = "/admin/login/"
SESSION_COOKIE_HTTPONLY = True
# No page script reads the CSRF cookie (forms carry the token), so scripts may not.
CSRF_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
# Behind TLS set TUFT_SECURE_COOKIES=1 (cookies only over https) and, if a proxy
# changes the host, TUFT_CSRF_TRUSTED_ORIGINS=https://tuft.example.org.
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = os.environ.get("TUFT_SECURE_COOKIES", "0") == "1"
# A refused CSRF check answers JSON to API clients and a page to browsers.
CSRF_FAILURE_VIEW = "dashboard_app.error_pages.csrf_failure"
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
STATICFILES_DIRS = [SHARE_DIR / "static"]
DATA_UPLOAD_MAX_MEMORY_SIZE = TUFT_MAX_BODY_BYTES  # Django's own check (request.body)

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["sessions_app.authentication.ApiKeyAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["sessions_app.permissions.IsTenant"],
    "DEFAULT_PARSER_CLASSES": ["tuft_project.parsers.JSONBodyParser", "training_app.parsers.ProtobufParser"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "EXCEPTION_HANDLER": "tuft_project.exceptions.api_exception_handler",
    "UNAUTHENTICATED_USER": None,
}

# django-rq's queues (and dashboard at /django-rq/). Distributed mode also adds
# them at start-up (dispatch.queues.register_queues) when Redis comes from
# models.yaml rather than REDIS_URL; embedded mode has none.
_RQ_NAMESPACE = os.environ.get("TUFT_REDIS_NAMESPACE", "tuft")
RQ_QUEUES: dict[str, dict[str, object]] = {
    f"{_RQ_NAMESPACE}-{lane}": {"URL": REDIS_URL, "DEFAULT_TIMEOUT": -1, "SERIALIZER": "rq.serializers.JSONSerializer"}
    for lane in ("train", "sample")
} if REDIS_URL else {}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    # Every line names the request (HTTP X-Request-ID or the operation's request id) and the tenant.
    "formatters": {
        "plain": {"()": "monitoring_app.log_context.ContextFormatter",
                  "fmt": "%(asctime)s %(levelname)s %(name)s%(context)s: %(message)s"},
        "json": {"()": "monitoring_app.log_context.JsonFormatter"},
    },
    "handlers": {"console": {"class": "logging.StreamHandler",
                             "formatter": "json" if os.environ.get("TUFT_LOG_FORMAT") == "json" else "plain"}},
    "root": {"handlers": ["console"], "level": os.environ.get("TUFT_LOG_LEVEL", "INFO")},
    "loggers": {"django.channels.server": {"level": "WARNING"}, "daphne": {"level": "WARNING"}},
}
