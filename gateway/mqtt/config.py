"""The MQTT broker to publish to, from EVDASH_MQTT_URL (+ user, password, CA file settings)."""

import ssl
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from django.core.exceptions import ImproperlyConfigured

from gateway.conf import setting

DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883}


@dataclass(frozen=True)
class MqttConfig:
    """Where the broker is and how to log in. repr() and str() never show the password."""

    host: str
    port: int
    tls: bool
    ca_file: str | None = None  # PEM CA bundle for mqtts://; None: the system's trusted CAs
    username: str | None = None
    password: str | None = None

    def __repr__(self) -> str:
        password = "'***'" if self.password else "None"
        return (
            f"MqttConfig(host={self.host!r}, port={self.port}, tls={self.tls}, ca_file={self.ca_file!r}, "
            f"username={self.username!r}, password={password})"
        )

    def __str__(self) -> str:
        """What log lines show: mqtts://poller@broker:8883 (no password)."""
        user = f"{self.username}@" if self.username else ""
        return f"{'mqtts' if self.tls else 'mqtt'}://{user}{self.host}:{self.port}"


def parse_mqtt_url(url: str, *, username: str = "", password: str = "", ca_file: str = "") -> MqttConfig:
    """mqtt://[user[:password]@]host[:port] or mqtts://...; credentials in the URL are percent-decoded
    and win over `username` and `password` (the settings), each on its own. Raises ImproperlyConfigured, never echoing
    the password back."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as exc:  # a port that is not a number or out of range
        raise ImproperlyConfigured(f"EVDASH_MQTT_URL is not a valid URL: {_without_password(url)} ({exc})") from None
    if parts.scheme not in DEFAULT_PORTS:
        raise ImproperlyConfigured(
            f"EVDASH_MQTT_URL must start with mqtt:// or mqtts://, not {parts.scheme + '://' if parts.scheme else ''}"
            f"{'' if parts.scheme else '(no scheme)'}: {_without_password(url)}"
        )
    if not parts.hostname:
        raise ImproperlyConfigured(f"EVDASH_MQTT_URL has no host: {_without_password(url)}")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ImproperlyConfigured(
            f"EVDASH_MQTT_URL takes no path, query or fragment (topics have their own settings): "
            f"{_without_password(url)}"
        )
    if parts.username is not None:  # user (and password) in the URL; the password may come from a setting
        username = unquote(parts.username)
    if parts.password is not None:
        password = unquote(parts.password)
    if password and not username:  # MQTT 3.1.1 sends a password only with a user name
        raise ImproperlyConfigured("EVDASH_MQTT_URL / EVDASH_MQTT_PASSWORD: a password needs a user name")
    tls = parts.scheme == "mqtts"
    if ca_file and not tls:
        raise ImproperlyConfigured("EVDASH_MQTT_CA_FILE is set but EVDASH_MQTT_URL is not mqtts://")
    return MqttConfig(
        host=parts.hostname,
        port=port or DEFAULT_PORTS[parts.scheme],
        tls=tls,
        ca_file=ca_file or None,
        username=username or None,
        password=password or None,
    )


def mqtt_config() -> MqttConfig:
    """The broker from the settings (MQTT_URL, MQTT_USERNAME, MQTT_PASSWORD, MQTT_CA_FILE)."""
    return parse_mqtt_url(
        setting("MQTT_URL"),
        username=setting("MQTT_USERNAME"),
        password=setting("MQTT_PASSWORD"),
        ca_file=setting("MQTT_CA_FILE"),
    )


def ssl_context(config: MqttConfig) -> ssl.SSLContext | None:
    """A verifying client context for mqtts:// (certificate and host name checked), None for mqtt://."""
    if not config.tls:
        return None
    if config.ca_file and not Path(config.ca_file).is_file():
        raise ImproperlyConfigured(f"EVDASH_MQTT_CA_FILE {config.ca_file} is not a readable file")
    try:
        return ssl.create_default_context(cafile=config.ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise ImproperlyConfigured(f"EVDASH_MQTT_CA_FILE {config.ca_file}: not a PEM CA bundle ({exc})") from None


def _without_password(url: str) -> str:
    """The URL as an error message may show it: user kept, password replaced by ***."""
    scheme, sep, rest = url.strip().partition("://")
    if not sep:
        scheme, rest = "", url.strip()
    userinfo, at, host = rest.rpartition("@")
    if at and ":" in userinfo:
        rest = f"{userinfo.split(':', 1)[0]}:***@{host}"
    return f"{scheme}{sep}{rest}"
