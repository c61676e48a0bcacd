"""evdash settings: every knob comes from the environment, with safe defaults for the embedded mode.

Two modes, chosen by EVDASH_MODE (README, "Modes"):
- embedded (the default): everything on one machine with no variables to set. SQLite and a
  generated secret key in ./var (both 0600), the in-memory channel layer, the Kafka-compatible
  broker on 127.0.0.1:9092. `make demo`, `probe` from a laptop and the tests run this way.
- production: asked for explicitly. PostgreSQL, Redis and a secret key are required, HTTPS
  settings are on, and a missing variable stops every entry point with one line on stderr.
"""

import os
import secrets
from datetime import timedelta
from pathlib import Path
from typing import NoReturn

import dj_database_url
from csp.constants import NONE, SELF, UNSAFE_INLINE

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(os.environ.get("EVDASH_VAR_DIR", BASE_DIR / "var"))

EMBEDDED = "embedded"
PRODUCTION = "production"
# What production cannot run without: each is a secret or an address only the operator knows.
PRODUCTION_REQUIRED = ("DJANGO_SECRET_KEY", "DATABASE_URL", "REDIS_URL")


def refuse_to_start(message: str) -> NoReturn:
    """Stop this process with one line on stderr and exit status 1.

    SystemExit rather than ImproperlyConfigured: settings load inside manage.py, daphne, uvicorn
    and pytest alike, and each of them would print an exception as a traceback. A missing
    variable is the operator's to fix, not a bug to debug.
    """
    raise SystemExit(f"evdash: {message}")


def env_bool(name: str, default: bool) -> bool:
    """Read a boolean environment variable ("1", "true", "yes", "on" are true)."""
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    return raw.strip().lower() in {"1", "true", "yes", "on"}


def env_list(name: str, default: str) -> list[str]:
    """Read a comma-separated environment variable."""
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


def private_file(path: Path) -> Path:
    """Create `path` (and its folder) readable by this user only, or tighten it if it exists."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
    if path.stat().st_mode & 0o077:
        path.chmod(0o600)
    return path


def embedded_secret_key() -> str:
    """One random key per installation, kept in var/ so sessions survive restarts.

    Every process of the demo reads the same file; the first to start creates it atomically
    (write a private temporary file, then link it into place) so no process reads half a key.
    """
    key_file = VAR_DIR / "secret_key"
    if not key_file.exists():
        temporary = private_file(VAR_DIR / f".secret_key.{os.getpid()}")
        temporary.write_text(secrets.token_urlsafe(50))
        try:
            os.link(temporary, key_file)
        except FileExistsError:
            pass  # another process of the demo won the race: use its key
        finally:
            temporary.unlink()
    return private_file(key_file).read_text().strip()


MODE = os.environ.get("EVDASH_MODE", "").strip().lower() or EMBEDDED
if MODE not in (EMBEDDED, PRODUCTION):
    refuse_to_start(f"EVDASH_MODE={MODE!r} is not a mode: use 'embedded' (the default) or 'production'.")
if MODE == PRODUCTION and (missing := [name for name in PRODUCTION_REQUIRED if not os.environ.get(name)]):
    refuse_to_start(
        f"production mode (EVDASH_MODE=production) needs {', '.join(missing)}: set "
        f'{"it" if len(missing) == 1 else "them"} (README, "Production deployment"), '
        "or unset EVDASH_MODE to run embedded."
    )

# Off by default in both modes: a traceback page shows code and settings to whoever gets one.
# DJANGO_DEBUG=1 is for development on a workstation.
DEBUG = env_bool("DJANGO_DEBUG", False)
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "") or embedded_secret_key()
ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", "127.0.0.1,localhost")
CSRF_TRUSTED_ORIGINS = env_list("DJANGO_CSRF_TRUSTED_ORIGINS", "")

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "channels",
    "csp",
    "axes",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "gateway",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    # After WhiteNoise (static files are not counted), before the rest (their time is).
    "gateway.health.middleware.RequestMetricsMiddleware",
    "csp.middleware.CSPMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last, as django-axes asks: it turns a locked-out login into its 429 response.
    "axes.middleware.AxesMiddleware",
]
# django-axes first: it refuses a locked-out login before any password is checked.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]

ROOT_URLCONF = "evdash.urls"
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
ASGI_APPLICATION = "evdash.asgi.application"

DATABASE_URL = os.environ.get("DATABASE_URL", "")
if DATABASE_URL:
    DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=60)}
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            # Created 0600 before SQLite opens it: it holds password hashes and sessions.
            # SQLite gives its journal and WAL files the database file's permissions.
            "NAME": private_file(VAR_DIR / "db.sqlite3"),
            # The demo writes from several processes: wait for the lock instead of failing.
            "OPTIONS": {"timeout": 20, "transaction_mode": "IMMEDIATE"},
        }
    }

REDIS_URL = os.environ.get("REDIS_URL", "")
if REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            # channels_redis blocks in BZPOPMIN for 5 s; redis-py 8 times sockets out after 5 s by
            # default, which races it. Give the socket more time than the blocking pop.
            "CONFIG": {
                "hosts": [{"address": REDIS_URL, "socket_timeout": 15}],
                "capacity": 1500,
                "expiry": 10,
            },
        }
    }
else:
    # Embedded mode hosts the web server and the Kafka consumer in one process (manage.py demo),
    # so the in-memory layer reaches every WebSocket. See README, "Why one process".
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
# The API's rate limits count in the cache: shared through Redis in production, per process embedded.
if REDIS_URL:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": REDIS_URL}}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "gateway:fleet"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STATICFILES_DIRS = [BASE_DIR / "static"]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        # Production serves what collectstatic wrote (README); embedded serves the sources.
        "BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"
        if MODE == PRODUCTION
        else "django.contrib.staticfiles.storage.StaticFilesStorage"
    },
}
# Plotly.js comes from the plotly package itself (gateway.staticfinders), never from a CDN.
STATICFILES_FINDERS = [
    "django.contrib.staticfiles.finders.FileSystemFinder",
    "django.contrib.staticfiles.finders.AppDirectoriesFinder",
    "gateway.staticfinders.PlotlyFinder",
]
WHITENOISE_USE_FINDERS = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

if MODE == PRODUCTION:
    # Production sits behind a TLS-terminating proxy; these keep `check --deploy` clean.
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_SSL_REDIRECT = env_bool("DJANGO_SECURE_SSL_REDIRECT", True)
    # A load balancer probes the backend over plain HTTP: a redirect would fail its health check.
    SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$"]
    SESSION_COOKIE_SECURE = env_bool("DJANGO_SECURE_COOKIES", True)
    CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
    SECURE_HSTS_SECONDS = int(os.environ.get("DJANGO_SECURE_HSTS_SECONDS", "31536000"))
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = env_bool("DJANGO_SECURE_HSTS_PRELOAD", False)
    SILENCED_SYSTEM_CHECKS = [] if SECURE_HSTS_PRELOAD else ["security.W021"]

# Mail: only for password reset. Without EMAIL_HOST the reset pages and links do not exist,
# rather than promising a mail that never leaves the machine.
EMAIL_HOST = os.environ.get("EMAIL_HOST", "")
EMAIL_PORT = int(os.environ.get("EMAIL_PORT", "587"))
EMAIL_HOST_USER = os.environ.get("EMAIL_HOST_USER", "")
EMAIL_HOST_PASSWORD = os.environ.get("EMAIL_HOST_PASSWORD", "")
EMAIL_USE_SSL = env_bool("EMAIL_USE_SSL", False)
EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", not EMAIL_USE_SSL)
DEFAULT_FROM_EMAIL = os.environ.get("DEFAULT_FROM_EMAIL", "evdash@localhost")
SERVER_EMAIL = DEFAULT_FROM_EMAIL
PASSWORD_RESET_ENABLED = bool(EMAIL_HOST)

# Failed logins (dashboard and admin alike go through django.contrib.auth): after
# EVDASH_LOGIN_FAILURE_LIMIT failures for one user name from one address, that pair is refused
# for EVDASH_LOGIN_COOLOFF_MIN minutes. Locking the pair, not the name alone, keeps an attacker
# from locking the operator out; behind a proxy the address is the proxy's (README).
AXES_FAILURE_LIMIT = int(os.environ.get("EVDASH_LOGIN_FAILURE_LIMIT", "5"))
AXES_COOLOFF_TIME = timedelta(minutes=float(os.environ.get("EVDASH_LOGIN_COOLOFF_MIN", "15")))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_TEMPLATE = "registration/lockout.html"

# The REST API (README, Integrations): a token or a login session, always; the same permissions as
# the pages; cursor pages; one error body; a rate limit per token (EVDASH_API_RATE_LIMIT).
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "gateway.api.auth.ApiTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_THROTTLE_CLASSES": ["gateway.api.throttles.TokenRateThrottle"],
    "DEFAULT_PAGINATION_CLASS": "gateway.api.pagination.CursorPage",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "gateway.api.errors.exception_handler",
    "DEFAULT_RENDERER_CLASSES": [
        "rest_framework.renderers.JSONRenderer",
        "rest_framework.renderers.BrowsableAPIRenderer",
    ],
}
SPECTACULAR_SETTINGS = {
    "TITLE": "evdash API",
    "DESCRIPTION": "Charge points, telemetry, history, sessions, alerts and commands (README, Integrations).",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    # The schema and its docs page need a token or a login, like every other endpoint.
    "SERVE_PERMISSIONS": ["rest_framework.permissions.IsAuthenticated"],
    "SCHEMA_PATH_PREFIX": "/api/v1",
    # Swagger UI and ReDoc from drf-spectacular-sidecar's static files: no CDN.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
}

# Content-Security-Policy (django-csp): scripts only from our own static files, nothing from
# elsewhere. Plotly.js writes style attributes and <style> rules as it draws, hence inline styles
# (which cannot run code); the favicon is a data: URL and Plotly's "download plot" uses blob:.
# connect-src 'self' covers the page's own ws:// or wss:// origin (CSP level 3).
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": [SELF],
        "script-src": [SELF],
        "style-src": [SELF, UNSAFE_INLINE],
        "img-src": [SELF, "data:", "blob:"],
        "font-src": [SELF],
        "connect-src": [SELF],
        "object-src": [NONE],
        "base-uri": [SELF],
        "form-action": [SELF],
        "frame-ancestors": [NONE],
    }
}

LOG_LEVEL = os.environ.get("EVDASH_LOG_LEVEL", "INFO")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)-7s %(name)s: %(message)s"},
    },
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": "WARNING"},
    "loggers": {
        "gateway": {"level": LOG_LEVEL},
        "evdash": {"level": LOG_LEVEL},
        "aiokafka": {"level": "WARNING"},
        "pymodbus": {"level": "CRITICAL"},
    },
}

# --- evdash product knobs (documented in README, "Configuration") ---------------------------
EVDASH = {
    "KAFKA_BOOTSTRAP_SERVERS": os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"),
    "KAFKA_SECURITY_PROTOCOL": os.environ.get("KAFKA_SECURITY_PROTOCOL", "PLAINTEXT"),
    "KAFKA_SASL_MECHANISM": os.environ.get("KAFKA_SASL_MECHANISM", "PLAIN"),
    "KAFKA_SASL_USERNAME": os.environ.get("KAFKA_SASL_USERNAME", ""),
    "KAFKA_SASL_PASSWORD": os.environ.get("KAFKA_SASL_PASSWORD", ""),
    "KAFKA_SSL_CAFILE": os.environ.get("KAFKA_SSL_CAFILE", ""),
    # Idempotence needs InitProducerId, which real Kafka and Confluent Cloud support and the
    # embedded Tansu broker does not: on by default, the demo and tests switch it off.
    "KAFKA_ENABLE_IDEMPOTENCE": env_bool("KAFKA_ENABLE_IDEMPOTENCE", True),
    "KAFKA_CLIENT_ID": os.environ.get("KAFKA_CLIENT_ID", "evdash"),
    "TELEMETRY_TOPIC": os.environ.get("EVDASH_TELEMETRY_TOPIC", "evdash.telemetry"),
    # Records the consumer could not decode or handle (with the reason in a header); empty means
    # the telemetry topic + ".dlq", i.e. evdash.telemetry.dlq.
    "DEAD_LETTER_TOPIC": os.environ.get("EVDASH_DEAD_LETTER_TOPIC", ""),
    # Operator commands to the pollers and their results back (README, "Commands"), keyed by charge point.
    "COMMANDS_TOPIC": os.environ.get("EVDASH_COMMANDS_TOPIC", "evdash.commands"),
    "COMMAND_RESULTS_TOPIC": os.environ.get("EVDASH_COMMAND_RESULTS_TOPIC", "evdash.command-results"),
    # Site load management: each site controller's status every period (gateway/sitecontrol/messages.py).
    "SITE_STATUS_TOPIC": os.environ.get("EVDASH_SITE_STATUS_TOPIC", "evdash.site-status"),
    # A command not executed within this many seconds of its creation is never executed.
    "COMMAND_EXPIRY_S": float(os.environ.get("EVDASH_COMMAND_EXPIRY_S", "30")),
    # Alerts as they are raised, cleared and acknowledged (README, "Alerts"), keyed by charge point.
    "ALERTS_TOPIC": os.environ.get("EVDASH_ALERTS_TOPIC", "evdash.alerts"),
    # History (README, "History"): raw records are kept this many days, one-minute rollups this many.
    "RETENTION_RAW_DAYS": int(os.environ.get("EVDASH_RETENTION_RAW_DAYS", "14")),
    "RETENTION_ROLLUP_DAYS": int(os.environ.get("EVDASH_RETENTION_ROLLUP_DAYS", "400")),
    "TOPIC_PARTITIONS": int(os.environ.get("EVDASH_TOPIC_PARTITIONS", "3")),
    "CONSUMER_GROUP": os.environ.get("EVDASH_CONSUMER_GROUP", "evdash-consumer"),
    "RELOAD_INTERVAL_S": float(os.environ.get("EVDASH_RELOAD_INTERVAL_S", "5")),
    "MODBUS_TIMEOUT_S": float(os.environ.get("EVDASH_MODBUS_TIMEOUT_S", "2")),
    "RECONNECT_BACKOFF_MAX_S": float(os.environ.get("EVDASH_RECONNECT_BACKOFF_MAX_S", "30")),
    # How often runpoller logs "poller stats: ..." (records and poll lateness), so operators see it keeps up.
    "POLLER_STATS_INTERVAL_S": float(os.environ.get("EVDASH_POLLER_STATS_INTERVAL_S", "60")),
    # Largest profile document an import reads (admin upload, `profiles import`); shipped ones are < 20 KB.
    "PROFILE_MAX_BYTES": int(os.environ.get("EVDASH_PROFILE_MAX_BYTES", str(1024 * 1024))),
    # Open live-dashboard WebSockets per user and web process; more are closed with code 4429.
    "WEBSOCKETS_PER_USER": int(os.environ.get("EVDASH_WEBSOCKETS_PER_USER", "20")),
    # --- The edge path (README, "The edge path") ---
    # Where runpoller publishes: "kafka" (direct) or "mqtt" (to the edge broker, which runbridge forwards).
    "POLLER_OUTPUT": os.environ.get("EVDASH_POLLER_OUTPUT", "kafka"),
    # This poller's name in evdash/pollers/<id>/state and its outbox file; default: the host name (+ site).
    "POLLER_ID": os.environ.get("EVDASH_POLLER_ID", ""),
    # mqtt:// or mqtts://, with user:password@ if the broker wants them (or EVDASH_MQTT_USERNAME/PASSWORD).
    "MQTT_URL": os.environ.get("EVDASH_MQTT_URL", "mqtt://127.0.0.1:1883"),
    "MQTT_USERNAME": os.environ.get("EVDASH_MQTT_USERNAME", ""),
    "MQTT_PASSWORD": os.environ.get("EVDASH_MQTT_PASSWORD", ""),
    "MQTT_CA_FILE": os.environ.get("EVDASH_MQTT_CA_FILE", ""),  # for mqtts://; default: the system's CAs
    "MQTT_TOPIC_PREFIX": os.environ.get("EVDASH_MQTT_TOPIC_PREFIX", "evdash"),
    # runbridge's MQTT client id: its persistent session (messages queued while it is down) is tied to it.
    "BRIDGE_CLIENT_ID": os.environ.get("EVDASH_BRIDGE_CLIENT_ID", "evdash-bridge"),
    "BRIDGE_STATS_INTERVAL_S": float(os.environ.get("EVDASH_BRIDGE_STATS_INTERVAL_S", "60")),
    # Durable store-and-forward: one SQLite file per poller and per bridge in this directory.
    "OUTBOX_DIR": os.environ.get("EVDASH_OUTBOX_DIR", str(VAR_DIR / "outbox")),
    # Limits of each outbox; when one is hit the oldest records are dropped, counted and logged.
    "OUTBOX_MAX_BYTES": int(os.environ.get("EVDASH_OUTBOX_MAX_BYTES", str(1024**3))),
    "OUTBOX_MAX_AGE_S": float(os.environ.get("EVDASH_OUTBOX_MAX_AGE_S", str(7 * 86400))),
    # --- Integrations (README, "Integrations") ---
    # Requests per API token (per user for a browser session): "<n>/<second|minute|hour|day>".
    "API_RATE_LIMIT": os.environ.get("EVDASH_API_RATE_LIMIT", "1200/minute"),
    # /metrics: with a token, scrapers send "Authorization: Bearer <token>"; empty means the web
    # process's /metrics needs a staff login and the workers' --metrics-port is open (bind it to a
    # private address: EVDASH_METRICS_HOST).
    "METRICS_TOKEN": os.environ.get("EVDASH_METRICS_TOKEN", ""),
    "METRICS_HOST": os.environ.get("EVDASH_METRICS_HOST", "127.0.0.1"),
    # Per-charge-point labels on metrics: off by default (5,000 charge points x series per metric).
    "METRICS_CHARGE_POINT_LABELS": env_bool("EVDASH_METRICS_CHARGE_POINT_LABELS", False),
    # How often each running stage writes its row for the pipeline-health page.
    "STAGE_STATUS_INTERVAL_S": float(os.environ.get("EVDASH_STAGE_STATUS_INTERVAL_S", "5")),
}
