"""Settings, read from the environment; SQLite and a local Redis are the zero-config default."""

from __future__ import annotations

import os
from pathlib import Path

import dj_database_url

BASE_DIR = Path(__file__).resolve().parent.parent


def envbool(name: str, default: str) -> bool:
    """Return the environment variable as a boolean ("1", "true", "yes", "on" are true)."""
    return os.getenv(name, default).strip().lower() in {"1", "true", "yes", "on"}


def envint(name: str, default: int) -> int:
    """Return the environment variable as an int."""
    return int(os.getenv(name, str(default)))


def envfloat(name: str, default: float) -> float:
    """Return the environment variable as a float."""
    return float(os.getenv(name, str(default)))


def envlist(name: str, default: str) -> list[str]:
    """Return a comma-separated environment variable as a list of stripped items."""
    return [item.strip() for item in os.getenv(name, default).split(",") if item.strip()]


DEBUG = envbool("DEBUG", "true")
# A production deployment must set SECRET_KEY; the fallback only exists for development.
SECRET_KEY = os.getenv("SECRET_KEY", "dev-only-insecure-key-change-me-" + "x" * 32)
ALLOWED_HOSTS = envlist("ALLOWED_HOSTS", "127.0.0.1,localhost,[::1],testserver")
CSRF_TRUSTED_ORIGINS = envlist("CSRF_TRUSTED_ORIGINS", "")
VAR_DIR = Path(os.getenv("VAR_DIR", str(BASE_DIR / "var")))
ARTIFACTS_ROOT = Path(os.getenv("ARTIFACTS_ROOT", str(VAR_DIR / "artifacts")))

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "django_celery_beat",
    "django_fsm",
    "ninja",
    "experiments",
    "control",
    # Last: its management commands (demo, traffic) use both apps above.
    "crucible_ui",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # Every error under /api/ answers JSON, also those Django gives before the API runs.
    "crucible_ui.api_errors.ApiJsonErrorsMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "crucible_ui.urls"
WSGI_APPLICATION = "crucible_ui.wsgi.application"
ASGI_APPLICATION = "crucible_ui.asgi.application"

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

# SQLite in WAL mode is the embedded default: readers (pages) never wait for the
# writer (the metric flusher). PostgreSQL comes in through DATABASE_URL.
_default_sqlite = f"sqlite:///{VAR_DIR / 'crucible.sqlite3'}"
DATABASES = {
    "default": dj_database_url.parse(
        os.getenv("DATABASE_URL", _default_sqlite), conn_max_age=envint("DB_CONN_MAX_AGE", 0)
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    DATABASES["default"]["OPTIONS"] = {
        "init_command": ("PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA busy_timeout=20000;"),
        "transaction_mode": "IMMEDIATE",
        "timeout": 20,
    }
    DATABASES["default"]["TEST"] = {"NAME": os.getenv("SQLITE_TEST_NAME", str(VAR_DIR / "test.sqlite3"))}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "/static/"
STATIC_ROOT = VAR_DIR / "static"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATICFILES_FINDERS = [
    "django.contrib.staticfiles.finders.FileSystemFinder",
    "django.contrib.staticfiles.finders.AppDirectoriesFinder",
    # plotly.js is served from the installed plotly package: no CDN, works offline.
    "crucible_ui.staticfinders.PlotlyFinder",
]

LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "experiments:list"
LOGOUT_REDIRECT_URL = "login"

# Redis is both the Celery broker and the channel layer.
REDIS_URL = os.getenv("REDIS_URL", "redis://127.0.0.1:6379/0")

CELERY_BROKER_URL = os.getenv("CELERY_BROKER_URL", REDIS_URL)
CELERY_RESULT_BACKEND = os.getenv("CELERY_RESULT_BACKEND", REDIS_URL)
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TIMEZONE = "UTC"
CELERY_TASK_DEFAULT_QUEUE = "control"
# Every worker also listens on its own queue, so the scheduler can hand a run to the
# worker whose GPU it leased.
CELERY_WORKER_DIRECT = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
# The periodic sweeps (scheduler tick, watchdog, approval timeouts, checkpoint cleanup);
# control.beat reads only the environment, so importing it here is safe.
from control import beat as _control_beat  # noqa: E402

CELERY_BEAT_SCHEDULE = _control_beat.BEAT_SCHEDULE
CELERY_TASK_ALWAYS_EAGER = envbool("CELERY_TASK_ALWAYS_EAGER", "false")

CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
        "CONFIG": {"hosts": [REDIS_URL]},
    }
}

# Control-loop knobs (seconds unless named otherwise).
SCHEDULER_TICK_SECONDS = envfloat("SCHEDULER_TICK_SECONDS", 5.0)
HEARTBEAT_SECONDS = envfloat("HEARTBEAT_SECONDS", 2.0)
HEARTBEAT_TIMEOUT_SECONDS = envfloat("HEARTBEAT_TIMEOUT_SECONDS", 30.0)
CANCEL_GRACE_SECONDS = envfloat("CANCEL_GRACE_SECONDS", 10.0)
METRIC_FLUSH_SECONDS = envfloat("METRIC_FLUSH_SECONDS", 0.1)
# Checkpoints of experiments that ended (failed, cancelled, rolled back) are deleted after this.
CHECKPOINT_RETENTION_DAYS = envfloat("CHECKPOINT_RETENTION_DAYS", 30.0)
# Drift is measured (every DRIFT_SWEEP_SECONDS, see control.beat) over this many of the newest
# served rows, once at least DRIFT_MIN_ROWS were served.
DRIFT_WINDOW_ROWS = envint("DRIFT_WINDOW_ROWS", 500)
DRIFT_MIN_ROWS = envint("DRIFT_MIN_ROWS", 100)
# Curated datasets (hard examples from served traffic) are written here.
DATASETS_ROOT = Path(os.getenv("DATASETS_ROOT", str(ARTIFACTS_ROOT / "datasets")))

# Production mode: everything `manage.py check --deploy` asks for.
if not DEBUG:
    # The development fallback key is public (it is in this file): never sign production
    # sessions with it. `check --deploy` cannot tell, since the key is long and varied.
    if not os.getenv("SECRET_KEY"):
        from django.core.exceptions import ImproperlyConfigured

        raise ImproperlyConfigured(
            "DEBUG is false: set SECRET_KEY (e.g. python -c 'import secrets; print(secrets.token_urlsafe(50))')"
        )
    SECURE_SSL_REDIRECT = envbool("SECURE_SSL_REDIRECT", "true")
    # Load balancers probe /healthz over plain HTTP inside the network.
    SECURE_REDIRECT_EXEMPT = [r"^healthz$"]
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = envint("SECURE_HSTS_SECONDS", 31536000)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_CONTENT_TYPE_NOSNIFF = True
    X_FRAME_OPTIONS = "DENY"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": os.getenv("LOG_LEVEL", "INFO")},
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}

# --- execution (scheduler, workers) ---
# 0 means no limit; a cost-aware policy may lower it further at run time.
SCHEDULER_MAX_CONCURRENT_RUNS = envint("SCHEDULER_MAX_CONCURRENT_RUNS", 0)
# Anti-starvation: priority points an experiment gains per minute it waits in the queue.
SCHEDULER_AGING_PER_MINUTE = envfloat("SCHEDULER_AGING_PER_MINUTE", 0.1)
# Devices the scheduler never leases, by GPU uuid or "<worker hostname>/<kind><index>".
SCHEDULER_RESERVED_DEVICES = envlist("SCHEDULER_RESERVED_DEVICES", "")
# CPU slots a worker offers when NVML finds no GPU, and beside its GPUs when it does.
WORKER_CPU_SLOTS = envint("WORKER_CPU_SLOTS", 1)
WORKER_CPU_SLOTS_WITH_GPUS = envint("WORKER_CPU_SLOTS_WITH_GPUS", 0)
# A worker whose last heartbeat is older than this is offline; its leases are freed.
WORKER_OFFLINE_SECONDS = envfloat("WORKER_OFFLINE_SECONDS", HEARTBEAT_TIMEOUT_SECONDS)
# A dispatched run that no worker picked up within this time is lost (and retried).
RUN_START_TIMEOUT_SECONDS = envfloat("RUN_START_TIMEOUT_SECONDS", 120.0)
# Retry backoff: base * 2**(failures-1), capped.
RETRY_BACKOFF_SECONDS = envfloat("RETRY_BACKOFF_SECONDS", 10.0)
RETRY_BACKOFF_MAX_SECONDS = envfloat("RETRY_BACKOFF_MAX_SECONDS", 600.0)
# How often a training process looks for a cancel request (cancel is seen within ~2 s).
CANCEL_POLL_SECONDS = envfloat("CANCEL_POLL_SECONDS", 0.5)
WATCHDOG_SECONDS = envfloat("WATCHDOG_SECONDS", 10.0)
# Import recipes (torch) in the worker's parent so each pool process starts warm (no CUDA there).
WORKER_PRELOAD_RECIPES = envbool("WORKER_PRELOAD_RECIPES", "true")
