"""EVDASH_MQTT_URL and friends: parsing, defaults, refusals, and a password that never shows; topic names."""

import ssl
from pathlib import Path
from urllib.parse import quote

import pytest
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings

from gateway.mqtt.config import MqttConfig, mqtt_config, parse_mqtt_url, ssl_context
from gateway.mqtt.topics import (
    charge_point_state_topic,
    parse_telemetry_topic,
    poller_state_topic,
    telemetry_subscription,
    telemetry_topic,
)

SECRET = "pa:ss@w/rd%"
QUOTED = quote(SECRET, safe="")  # as it must be written in a URL


def test_defaults_per_scheme() -> None:
    assert parse_mqtt_url("mqtt://broker.local") == MqttConfig("broker.local", 1883, False)
    assert parse_mqtt_url("mqtts://broker.local") == MqttConfig("broker.local", 8883, True)
    assert parse_mqtt_url("mqtts://10.0.0.5:9883/").port == 9883


def test_credentials_in_the_url_are_percent_decoded_and_win() -> None:
    config = parse_mqtt_url("mqtts://poll%40er:pa%3Ass%40w%2Frd%25@broker:8883", username="other", password="x")
    assert (config.username, config.password) == ("poll@er", SECRET)


def test_credentials_from_the_settings() -> None:
    config = parse_mqtt_url("mqtt://broker", username="poller", password=SECRET, ca_file="")
    assert (config.username, config.password, config.ca_file) == ("poller", SECRET, None)


def test_password_never_shown() -> None:
    config = parse_mqtt_url("mqtts://poller@broker", password=SECRET)
    for text in (repr(config), str(config), f"{config}", repr([config])):
        assert SECRET not in text and "pa:ss" not in text
    assert str(config) == "mqtts://poller@broker:8883"
    assert "password='***'" in repr(config)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://broker", "must start with mqtt:// or mqtts://"),
        ("broker:1883", "must start with mqtt:// or mqtts://"),
        ("tcp://poller:" + QUOTED + "@broker", "must start with mqtt:// or mqtts://"),
        ("mqtt://", "has no host"),
        ("mqtt://poller:" + QUOTED + "@", "has no host"),
        ("mqtt://broker:port", "not a valid URL"),
        ("mqtt://poller:" + SECRET + "@broker", "takes no path"),  # an unquoted '/' in the password
        ("mqtt://poller:" + QUOTED + "@broker:99999", "not a valid URL"),
        ("mqtt://broker/evdash", "takes no path"),
        ("mqtt://broker?ca=x", "takes no path"),
        ("mqtt://:" + QUOTED + "@broker", "needs a user name"),
    ],
)
def test_bad_urls_refused_without_the_password(url: str, message: str) -> None:
    with pytest.raises(ImproperlyConfigured, match=message) as refused:
        parse_mqtt_url(url)
    assert SECRET not in str(refused.value) and QUOTED not in str(refused.value)


def test_ca_file_only_for_mqtts() -> None:
    with pytest.raises(ImproperlyConfigured, match="not mqtts://"):
        parse_mqtt_url("mqtt://broker", ca_file="/etc/ssl/ca.pem")


def test_mqtt_config_reads_the_settings() -> None:
    evdash = settings.EVDASH | {
        "MQTT_URL": "mqtts://broker.example:8884",
        "MQTT_USERNAME": "poller",
        "MQTT_PASSWORD": SECRET,
        "MQTT_CA_FILE": "/tmp/ca.pem",
    }
    with override_settings(EVDASH=evdash):
        assert mqtt_config() == MqttConfig("broker.example", 8884, True, "/tmp/ca.pem", "poller", SECRET)


def test_ssl_context(tmp_path: Path) -> None:
    assert ssl_context(parse_mqtt_url("mqtt://broker")) is None
    context = ssl_context(parse_mqtt_url("mqtts://broker"))
    assert context is not None
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    with pytest.raises(ImproperlyConfigured, match="is not a readable file"):
        ssl_context(parse_mqtt_url("mqtts://broker", ca_file=str(tmp_path / "missing.pem")))
    (tmp_path / "junk.pem").write_text("not a certificate")
    with pytest.raises(ImproperlyConfigured, match="not a PEM CA bundle"):
        ssl_context(parse_mqtt_url("mqtts://broker", ca_file=str(tmp_path / "junk.pem")))


def test_topic_names() -> None:
    assert telemetry_topic("depot", "cp-1") == "evdash/depot/cp-1/telemetry"
    assert charge_point_state_topic("depot", "cp-1") == "evdash/depot/cp-1/state"
    assert poller_state_topic("host-depot") == "evdash/pollers/host-depot/state"
    assert telemetry_subscription() == "evdash/+/+/telemetry"
    assert parse_telemetry_topic("evdash/depot/cp-1/telemetry") == ("depot", "cp-1")


@pytest.mark.parametrize("segment", ["", "a/b", "a+", "#", "a\0"])
def test_topic_levels_refuse_mqtt_syntax(segment: str) -> None:
    with pytest.raises(ValueError, match="cannot be an MQTT topic level"):
        telemetry_topic("depot", segment)
    with pytest.raises(ValueError, match="cannot be an MQTT topic level"):
        poller_state_topic(segment)


@pytest.mark.parametrize(
    "topic",
    [
        "evdash/depot/cp-1/state",
        "evdash/pollers/p1/telemetry",
        "evdash/depot/cp-1/telemetry/x",
        "evdash/depot/telemetry",
        "evdash//cp-1/telemetry",
        "evdash/+/cp-1/telemetry",
        "evdash/depot/#/telemetry",
        "other/depot/cp-1/telemetry",
        "evdashx/depot/cp-1/telemetry",
        "",
    ],
)
def test_parse_telemetry_topic_refuses(topic: str) -> None:
    with pytest.raises(ValueError, match="not a telemetry topic"):
        parse_telemetry_topic(topic)


def test_prefix_with_levels() -> None:
    with override_settings(EVDASH=settings.EVDASH | {"MQTT_TOPIC_PREFIX": "acme/evdash"}):
        assert telemetry_topic("depot", "cp-1") == "acme/evdash/depot/cp-1/telemetry"
        assert parse_telemetry_topic("acme/evdash/depot/cp-1/telemetry") == ("depot", "cp-1")
        assert telemetry_subscription() == "acme/evdash/+/+/telemetry"
        with pytest.raises(ValueError, match="not a telemetry topic"):
            parse_telemetry_topic("evdash/depot/cp-1/telemetry")
