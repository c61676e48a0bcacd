"""Modes as a user meets them: `manage.py` with no variables, and production asked for explicitly.

Each case runs the real entry point in a subprocess with a clean environment (no DJANGO_*,
EVDASH_*, DATABASE_URL or REDIS_URL from the caller), as a fresh shell after `make demo` has it.
"""

import os
import secrets
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings

BASE_DIR = Path(settings.BASE_DIR)
CALLER_CONFIG = ("DJANGO_", "EVDASH_", "DATABASE_URL", "REDIS_URL", "KAFKA_", "EMAIL_")
# What README, "Production deployment", exports (the addresses are never contacted by `check`).
PRODUCTION_ENV = {
    "EVDASH_MODE": "production",
    "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),
    "DATABASE_URL": "postgres://evdash:pw@127.0.0.1:5432/evdash",
    "REDIS_URL": "redis://127.0.0.1:6379/0",
}


def clean_env(var_dir: Path, **extra: str) -> dict[str, str]:
    """This process's environment without any evdash or Django configuration, plus `extra`."""
    env = {name: value for name, value in os.environ.items() if not name.startswith(CALLER_CONFIG)}
    return env | {"EVDASH_VAR_DIR": str(var_dir)} | extra


def run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(args, env=env, cwd=BASE_DIR, capture_output=True, text=True, timeout=120)


def manage(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return run([sys.executable, "manage.py", *args], env)


def assert_refused_in_one_line(result: subprocess.CompletedProcess, *names: str) -> str:
    assert result.returncode != 0, result
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, lines
    for name in names:
        assert name in lines[0]
    return lines[0]


def mode_bits(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize(
    "args",
    [
        ["check"],
        ["probe", "--help"],
        ["runpoller", "--help"],
    ],
)
def test_embedded_mode_needs_no_variables(tmp_path: Path, args: list[str]) -> None:
    result = manage(*args, env=clean_env(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr


def test_unmigrated_database_is_one_line(tmp_path: Path) -> None:
    # `probe` straight after cloning, before `make install` or `make demo` created the tables.
    result = manage("probe", "127.0.0.1:1", "--profile", "keba-p30", env=clean_env(tmp_path))
    line = assert_refused_in_one_line(result, "no such table", "make install", "manage.py migrate")
    assert line.startswith("evdash: the database has no evdash tables yet")


def test_embedded_files_are_private(tmp_path: Path) -> None:
    var_dir = tmp_path / "var"
    result = manage("migrate", "--verbosity", "0", env=clean_env(var_dir))
    assert result.returncode == 0, result.stderr
    assert mode_bits(var_dir) == 0o700
    assert mode_bits(var_dir / "secret_key") == 0o600
    assert len((var_dir / "secret_key").read_text()) >= 50
    # The migrated database: written through SQLite, still readable by its owner only.
    assert mode_bits(var_dir / "db.sqlite3") == 0o600
    assert (var_dir / "db.sqlite3").stat().st_size > 0  # migrate wrote to this very file
    assert [path.name for path in var_dir.iterdir() if path.name.startswith(".secret_key")] == []
    # What `make install` / `make demo` leave behind is enough for the README's commands.
    listed = manage("profiles", "list", env=clean_env(var_dir))
    assert listed.returncode == 0, listed.stderr
    assert "keba-p30" in listed.stdout


def test_existing_world_readable_files_are_tightened(tmp_path: Path) -> None:
    # An installation from before this check: db.sqlite3 and secret_key left 0644 by the umask.
    tmp_path.joinpath("db.sqlite3").touch(mode=0o644)
    tmp_path.joinpath("secret_key").write_text("k" * 60)
    tmp_path.joinpath("secret_key").chmod(0o644)
    result = manage("check", env=clean_env(tmp_path))
    assert result.returncode == 0, result.stderr
    assert mode_bits(tmp_path / "db.sqlite3") == 0o600
    assert mode_bits(tmp_path / "secret_key") == 0o600
    assert (tmp_path / "secret_key").read_text() == "k" * 60  # kept: sessions survive


def test_embedded_secret_key_is_kept_between_runs(tmp_path: Path) -> None:
    show_key = ["shell", "-v", "0", "-c", "from django.conf import settings; print(settings.SECRET_KEY)"]
    first = manage(*show_key, env=clean_env(tmp_path))
    second = manage(*show_key, env=clean_env(tmp_path))
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    assert first.stdout.strip() == second.stdout.strip() == (tmp_path / "secret_key").read_text().strip()


@pytest.mark.parametrize("args", [["check"], ["probe", "--help"], ["help"]])
def test_production_without_secret_key_is_one_line(tmp_path: Path, args: list[str]) -> None:
    env = clean_env(tmp_path, **(PRODUCTION_ENV | {"DJANGO_SECRET_KEY": ""}))
    line = assert_refused_in_one_line(manage(*args, env=env), "DJANGO_SECRET_KEY", "EVDASH_MODE")
    assert "DATABASE_URL" not in line  # only what is missing
    assert not (tmp_path / "secret_key").exists()  # production never generates a key


def test_production_names_every_missing_variable(tmp_path: Path) -> None:
    result = manage("check", env=clean_env(tmp_path, EVDASH_MODE="production"))
    assert_refused_in_one_line(result, "DJANGO_SECRET_KEY", "DATABASE_URL", "REDIS_URL")


def test_asgi_app_without_secret_key_is_one_line(tmp_path: Path) -> None:
    # What daphne (or any ASGI server) does first: import the application.
    env = clean_env(tmp_path, **(PRODUCTION_ENV | {"DJANGO_SECRET_KEY": ""}))
    result = run([sys.executable, "-c", "import evdash.asgi"], env)
    assert_refused_in_one_line(result, "DJANGO_SECRET_KEY")


def test_unknown_mode_is_one_line(tmp_path: Path) -> None:
    result = manage("check", env=clean_env(tmp_path, EVDASH_MODE="prod"))
    assert_refused_in_one_line(result, "'prod'", "embedded", "production")


def test_production_passes_check_deploy(tmp_path: Path) -> None:
    result = manage("check", "--deploy", "--fail-level", "WARNING", env=clean_env(tmp_path, **PRODUCTION_ENV))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout
    assert list(tmp_path.iterdir()) == []  # production writes nothing to var/


def test_production_settings(tmp_path: Path) -> None:
    script = (
        "from django.conf import settings as s; "
        "print(s.DEBUG, s.SESSION_COOKIE_SECURE, s.DATABASES['default']['ENGINE'], "
        "s.CHANNEL_LAYERS['default']['BACKEND'], s.STORAGES['staticfiles']['BACKEND'])"
    )
    result = manage("shell", "-v", "0", "-c", script, env=clean_env(tmp_path, **PRODUCTION_ENV))
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [
        "False",
        "True",
        "django.db.backends.postgresql",
        "channels_redis.core.RedisChannelLayer",
        "whitenoise.storage.CompressedManifestStaticFilesStorage",
    ]


def test_embedded_settings(tmp_path: Path) -> None:
    script = (
        "from django.conf import settings as s; "
        "print(s.DEBUG, s.DATABASES['default']['ENGINE'], s.CHANNEL_LAYERS['default']['BACKEND'], "
        "s.STORAGES['staticfiles']['BACKEND'], getattr(s, 'SECURE_SSL_REDIRECT'))"
    )
    result = manage("shell", "-v", "0", "-c", script, env=clean_env(tmp_path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [
        "False",
        "django.db.backends.sqlite3",
        "channels.layers.InMemoryChannelLayer",
        # Served from the sources by WhiteNoise: the demo needs no collectstatic.
        "django.contrib.staticfiles.storage.StaticFilesStorage",
        "False",  # plain HTTP on loopback
    ]
