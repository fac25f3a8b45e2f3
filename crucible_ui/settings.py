"""Settings, read from the environment; SQLite and a local Redis are the zero-config default."""

from __future__ import annotations

import ipaddress
import os
from datetime import timedelta
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


# Off unless asked for: `make run` (the Makefile) and the test suite set DEBUG=1 for development.
DEBUG = envbool("DEBUG", "false")
# Daphne serves /static/ through WhiteNoise (SERVE_STATIC, on by default with DEBUG; without it
# a proxy in front serves STATIC_ROOT). Files that were never collected (a test run, a checkout
# before its first collectstatic) are found through the finders, uncompressed.
SERVE_STATIC = envbool("SERVE_STATIC", "true" if DEBUG else "false")
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
    "crucible_ui.access.DenyByDefaultMiddleware",  # every view declares its access, or is refused
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

if SERVE_STATIC:
    # Right after the security headers: a static file answers before sessions or auth are looked at.
    MIDDLEWARE.insert(1, "whitenoise.middleware.WhiteNoiseMiddleware")

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
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
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
# collectstatic writes each file under a name holding a hash of its content, plus .gz copies;
# pages link the hashed names, which WhiteNoise serves compressed and cacheable for a year.
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "crucible_ui.staticfinders.HashedCompressedStaticStorage"},
}
WHITENOISE_USE_FINDERS = True

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
# --- broker outages (README "What survives what") ---
# Kombu's Redis transport with the reconnect fix of crucible_ui/broker.py (without it a worker
# running a training run crashes when Redis goes away); only for plain redis:// brokers.
if CELERY_BROKER_URL.startswith("redis://"):
    CELERY_BROKER_TRANSPORT = "crucible_ui.broker:Transport"
# Keep reconnecting through an outage of any length (Celery's default gives up after 100 tries).
CELERY_BROKER_CONNECTION_MAX_RETRIES = None
# Nothing reads task results (the database holds every outcome). A task sent without this
# makes its sender subscribe to the result's pub/sub channel, and during a Redis outage that
# subscription retries for 20 s inside the sender: beat stalled on every tick it sent.
CELERY_TASK_IGNORE_RESULT = True
# Running tasks go on through an outage: a training run's results are in the database, not in
# the broker (Celery's future default of cancelling them would throw minutes of training away).
CELERY_WORKER_CANCEL_LONG_RUNNING_TASKS_ON_CONNECTION_LOSS = False
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
# The periodic sweeps (scheduler tick, watchdog, approval timeouts, checkpoint cleanup);
# control.beat reads only the environment, so importing it here is safe.
from control import beat as _control_beat  # noqa: E402

CELERY_BEAT_SCHEDULE = _control_beat.BEAT_SCHEDULE
CELERY_TASK_ALWAYS_EAGER = envbool("CELERY_TASK_ALWAYS_EAGER", "false")

CHANNEL_LAYERS = {
    "default": {
        # Redis pub/sub, plus a "layer.resync" event to open sockets after a Redis reconnection.
        "BACKEND": "experiments.live.layer.ResyncingPubSubChannelLayer",
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
            "DEBUG is false: set SECRET_KEY (e.g. python -c 'import secrets; print(secrets.token_urlsafe(50))'),"
            " or DEBUG=1 for development on this machine"
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
# An external run (a client outside the workers) with no metric batch or heartbeat for this
# long is marked lost by the watchdog and its experiment requeued for the client's next start.
EXTERNAL_RUN_TIMEOUT = envfloat("EXTERNAL_RUN_TIMEOUT", 600.0)
# Retry backoff: base * 2**(failures-1), capped.
RETRY_BACKOFF_SECONDS = envfloat("RETRY_BACKOFF_SECONDS", 10.0)
RETRY_BACKOFF_MAX_SECONDS = envfloat("RETRY_BACKOFF_MAX_SECONDS", 600.0)
# How often a training process looks for a cancel request (cancel is seen within ~2 s).
CANCEL_POLL_SECONDS = envfloat("CANCEL_POLL_SECONDS", 0.5)
WATCHDOG_SECONDS = envfloat("WATCHDOG_SECONDS", 10.0)
# How often a training process samples its own CPU, memory and GPU as sys/ metrics (0: never).
SYSTEM_METRICS_SECONDS = envfloat("SYSTEM_METRICS_SECONDS", 2.0)
# A worker asked to stop (SIGTERM, warm shutdown, Ctrl-C of `make run`) has its runs checkpoint
# at their next step; pool processes still training after this long are killed. The launcher
# reads the same variable and waits a little longer before killing the worker.
STOP_TIMEOUT_S = envfloat("CRUCIBLE_STOP_TIMEOUT_S", 30.0)
# An attempt the platform ends (shutdown, lost worker, outage) is requeued without spending
# one of max_attempts; past this many in an hour the experiment fails (a runaway loop).
INTERRUPTIONS_PER_HOUR_MAX = envint("INTERRUPTIONS_PER_HOUR_MAX", 6)
# Script runs (the `script` recipe): the folders a script may run in. Empty (the default) turns
# script runs off; an administrator lists trusted folders, comma-separated.
SCRIPT_ROOTS = envlist("SCRIPT_ROOTS", "")
# The address scripts are told to reach this dashboard at (CRUCIBLE_API_URL); empty: not passed.
CRUCIBLE_API_URL = os.getenv("CRUCIBLE_API_URL", "")
# Every run's stdout/stderr: one file per run, rotated at RUN_LOG_MAX_BYTES, RUN_LOG_BACKUPS kept.
RUN_LOGS_ROOT = Path(os.getenv("RUN_LOGS_ROOT", str(VAR_DIR / "runlogs")))
RUN_LOG_MAX_BYTES = envint("RUN_LOG_MAX_BYTES", 1024 * 1024)
RUN_LOG_BACKUPS = envint("RUN_LOG_BACKUPS", 3)
# Import recipes (torch) in the worker's parent so each pool process starts warm (no CUDA there).
WORKER_PRELOAD_RECIPES = envbool("WORKER_PRELOAD_RECIPES", "true")
# Recipe plug-ins that are not installed packages: comma-separated module:OBJECT (docs/recipes.md).
# Installed packages join through the `crucible_control.recipes` entry points without it.
CRUCIBLE_RECIPES = envlist("CRUCIBLE_RECIPES", "")

# --- security: login throttling, password hashing, CSP, Permissions-Policy, bind address ---
# DEBUG's error pages show settings, paths and source code. HOST is the address Daphne binds
# (the Procfile and `make run` both take it from there): with DEBUG on, refuse to load the
# settings for anything but loopback, so Daphne exits before it ever listens.
_bind_host = os.getenv("HOST", "").strip().strip("[]")
if DEBUG and _bind_host:
    try:
        _loopback = _bind_host == "localhost" or ipaddress.ip_address(_bind_host).is_loopback
    except ValueError:  # a host name other than localhost resolves to who knows what
        _loopback = False
    if not _loopback:
        from django.core.exceptions import ImproperlyConfigured

        raise ImproperlyConfigured(
            f"DEBUG is on and HOST={_bind_host} is not a loopback address: DEBUG pages would show settings"
            " and source code to the network. Serve a network with DEBUG=0 (and SECRET_KEY, ALLOWED_HOSTS),"
            " or bind HOST=127.0.0.1 for development."
        )

INSTALLED_APPS += ["axes"]
MIDDLEWARE.insert(
    MIDDLEWARE.index("django.middleware.security.SecurityMiddleware") + 1,
    "django_permissions_policy.PermissionsPolicyMiddleware",
)
MIDDLEWARE.insert(
    MIDDLEWARE.index("django.middleware.security.SecurityMiddleware") + 1, "csp.middleware.CSPMiddleware"
)
# A missing page is the dashboard's own 404 page, also with DEBUG (Django's technical page otherwise).
MIDDLEWARE.insert(
    MIDDLEWARE.index("crucible_ui.access.DenyByDefaultMiddleware"),
    "crucible_ui.pages.FriendlyNotFoundMiddleware",
)
# Last, as axes asks: it turns a locked-out request's answer into the lockout response.
MIDDLEWARE.append("axes.middleware.AxesMiddleware")

# Axes first: a locked-out caller is refused before any password is hashed.
AUTHENTICATION_BACKENDS = [
    "crucible_ui.lockout.RequestAxesBackend",
    "django.contrib.auth.backends.ModelBackend",
    # Project roles grant permissions inside their project (experiments/projects.py).
    "experiments.projects.ProjectRoleBackend",
]
# Failures count per username and per address (crucible_ui.lockout.lockout_parameters); after
# AXES_FAILURE_LIMIT of them within the cool-off, logins are refused for AXES_COOLOFF_MINUTES.
# `manage.py axes_reset_username <name>` / `axes_reset_ip <address>` lift a lockout early.
AXES_FAILURE_LIMIT = envint("AXES_FAILURE_LIMIT", 5)
AXES_COOLOFF_TIME = timedelta(minutes=envfloat("AXES_COOLOFF_MINUTES", 15.0))
AXES_LOCKOUT_PARAMETERS = "crucible_ui.lockout.lockout_parameters"
AXES_LOCKOUT_CALLABLE = "crucible_ui.lockout.lockout_response"
# Attempts while locked out do not extend the lockout: it ends when it said it would.
AXES_RESET_COOL_OFF_ON_FAILURE_DURING_LOCKOUT = False
# A success does not wipe the failures: it would also wipe those counted against the address,
# and one valid account would let its owner guess other users' passwords without end.
AXES_RESET_ON_SUCCESS = False
# The address is REMOTE_ADDR: behind a reverse proxy, run Daphne with --proxy-headers so that
# it is the client's (see SECURITY.md); a client-sent X-Forwarded-For is never trusted here.
AXES_IPWARE_META_PRECEDENCE_ORDER = ["REMOTE_ADDR"]
# No start-up banner in every command's output; failures and lockouts are still logged (WARNING).
AXES_VERBOSE = False

# Argon2 (memory-hard) for new and changed passwords; the others verify older hashes, which
# Django rehashes with Argon2 at the next successful login.
PASSWORD_HASHERS = [
    "django.contrib.auth.hashers.Argon2PasswordHasher",
    "django.contrib.auth.hashers.PBKDF2PasswordHasher",
    "django.contrib.auth.hashers.PBKDF2SHA1PasswordHasher",
    "django.contrib.auth.hashers.ScryptPasswordHasher",
]

# Content-Security-Policy (django-csp): scripts only from our own origin by src, never inline
# (json_script data blocks are not executed, so they need nothing); no other origin at all.
# Inline styles stay allowed: plotly.js writes its rules into <style> elements it creates
# (per chart, so no nonce or hash can name them), and our meters set style attributes.
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": ["'self'"],
        # The experiment page alone adds 'unsafe-eval' (csp_update on its view): plotly.js's
        # WebGL traces (scattergl, its live charts) compile their shaders with Function().
        "script-src": ["'self'"],
        "style-src": ["'self'", "'unsafe-inline'"],
        "img-src": ["'self'", "data:"],
        "font-src": ["'self'"],
        # Same-origin fetches and the live websockets (ws:/wss: to this host match 'self').
        "connect-src": ["'self'"],
        "object-src": ["'none'"],
        "base-uri": ["'none'"],
        "form-action": ["'self'"],
        "frame-ancestors": ["'none'"],
    }
}
# Permissions-Policy (django-permissions-policy): no page here needs any of these devices.
PERMISSIONS_POLICY: dict[str, list[str]] = {
    feature: []
    for feature in (
        "accelerometer",
        "autoplay",
        "camera",
        "display-capture",
        "encrypted-media",
        "fullscreen",
        "geolocation",
        "gyroscope",
        "magnetometer",
        "microphone",
        "midi",
        "payment",
        "publickey-credentials-get",
        "screen-wake-lock",
        "serial",
        "usb",
        "xr-spatial-tracking",
    )
}
