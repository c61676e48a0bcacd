"""Kafka over TLS, for real: stunnel (Debian's stunnel4) terminates TLS in front of Tansu.

Tansu's own TLS listener does not work, so stunnel accepts TLS with a certificate of a throwaway
CA and forwards plain Kafka to Tansu, which advertises stunnel's port: every connection the
client opens (bootstrap, then the partition leader from the metadata) goes through TLS.
SASL cannot be tested for real (Tansu has no SASL); its configuration is tested at the end.
"""

import contextlib
import logging
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from gateway.kafka.config import client_options, producer_options
from gateway.kafka.embedded import start_broker, stop_broker
from gateway.kafka.topics import ensure_topics
from tests.certs import Certificates, make_certificates
from tests.conftest import free_port, within

STUNNEL = "/usr/bin/stunnel4"
SASL_PASSWORD = "sasl-secret-Zq81-never-logged"  # a test value to look for in the logs


def wait_listening(port: int, process: subprocess.Popen, what: str, log: Path, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        with socket.socket() as sock:
            sock.settimeout(0.2)
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        if process.poll() is not None:
            raise AssertionError(f"{what} exited with {process.returncode}: {log.read_text(errors='replace')[-800:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not listen on 127.0.0.1:{port} within {timeout_s} s")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def kafka_tls_port(tmp_path_factory: pytest.TempPathFactory, certificates: Certificates) -> Iterator[int]:
    """stunnel on a TLS port of its own, in front of a Tansu that advertises that port."""
    assert shutil.which(STUNNEL), "stunnel4 is not installed: run  sudo apt-get install -y stunnel4"
    directory = tmp_path_factory.mktemp("stunnel")
    tls_port, tansu_port = free_port(), free_port()
    tansu = start_broker(port=tansu_port, advertised_port=tls_port, log_path=directory / "tansu.log")
    config = directory / "stunnel.conf"
    config.write_text(
        f"foreground = yes\npid = {directory / 'stunnel.pid'}\ndebug = notice\n"
        f"[kafka]\naccept = 127.0.0.1:{tls_port}\nconnect = 127.0.0.1:{tansu_port}\n"
        f"cert = {certificates.combined_file}\n"
    )
    log = directory / "stunnel.log"
    with log.open("wb") as output:
        stunnel = subprocess.Popen([STUNNEL, str(config)], stdout=output, stderr=subprocess.STDOUT)
    try:
        wait_listening(tls_port, stunnel, "stunnel", log)
        yield tls_port
    finally:
        stunnel.terminate()
        stunnel.wait(10)
        stop_broker(tansu)


@pytest.fixture
def kafka_over_tls(kafka_tls_port: int, certificates: Certificates, monkeypatch: pytest.MonkeyPatch) -> str:
    """The product's settings for the TLS endpoint; returns a topic of this test's own."""
    topic = f"test.tls.{uuid.uuid4().hex[:8]}"
    values = {
        "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{kafka_tls_port}",
        "KAFKA_SECURITY_PROTOCOL": "SSL",
        "KAFKA_SSL_CAFILE": str(certificates.ca_file),
        "KAFKA_ENABLE_IDEMPOTENCE": False,
        "TELEMETRY_TOPIC": topic,
    }
    for key, value in values.items():
        monkeypatch.setitem(settings.EVDASH, key, value)
    return topic


async def test_produce_and_consume_over_tls(kafka_over_tls: str) -> None:
    topic = kafka_over_tls
    await within(ensure_topics([topic], partitions=1))
    producer = AIOKafkaProducer(**producer_options())
    await within(producer.start())
    try:
        for seq in range(20):
            await within(producer.send_and_wait(topic, f"record {seq}".encode(), key=b"cp-01"))
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(topic, auto_offset_reset="earliest", enable_auto_commit=False, **client_options())
    await within(consumer.start())
    try:
        values: list[bytes] = []
        while len(values) < 20:
            batches = await within(consumer.getmany(timeout_ms=500))
            values += [message.value for batch in batches.values() for message in batch]
    finally:
        await consumer.stop()
    assert values == [f"record {seq}".encode() for seq in range(20)]


async def test_a_client_that_does_not_trust_the_ca_fails_clearly(
    kafka_over_tls: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setitem(settings.EVDASH, "KAFKA_SSL_CAFILE", "")  # the system's CAs only
    producer = AIOKafkaProducer(**producer_options())
    with caplog.at_level(logging.ERROR, logger="aiokafka"), pytest.raises(KafkaConnectionError, match="bootstrap"):
        await within(producer.start())
    await producer.stop()
    assert "CERTIFICATE_VERIFY_FAILED" in caplog.text


def sasl_settings(monkeypatch: pytest.MonkeyPatch, **values: str) -> None:
    defaults = {"KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_USERNAME": "api-key", "KAFKA_SASL_PASSWORD": ""}
    for key, value in (defaults | values).items():
        monkeypatch.setitem(settings.EVDASH, key, value)


def test_sasl_ssl_options_for_confluent_cloud(monkeypatch: pytest.MonkeyPatch, certificates: Certificates) -> None:
    sasl_settings(monkeypatch, KAFKA_SASL_PASSWORD=SASL_PASSWORD, KAFKA_SSL_CAFILE=str(certificates.ca_file))
    options = client_options()
    assert options["security_protocol"] == "SASL_SSL"
    assert (options["sasl_mechanism"], options["sasl_plain_username"]) == ("PLAIN", "api-key")
    assert options["sasl_plain_password"] == SASL_PASSWORD
    assert options["ssl_context"].verify_mode.name == "CERT_REQUIRED"
    assert options["ssl_context"].check_hostname
    # SASL_PLAINTEXT: credentials without TLS (a private network), no SSL context.
    sasl_settings(monkeypatch, KAFKA_SECURITY_PROTOCOL="sasl_plaintext", KAFKA_SASL_PASSWORD=SASL_PASSWORD)
    assert "ssl_context" not in client_options()


@pytest.mark.parametrize("missing", ["KAFKA_SASL_USERNAME", "KAFKA_SASL_PASSWORD"])
def test_sasl_without_credentials_is_refused_without_showing_them(
    monkeypatch: pytest.MonkeyPatch, missing: str
) -> None:
    sasl_settings(monkeypatch, **({"KAFKA_SASL_PASSWORD": SASL_PASSWORD} | {missing: ""}))
    with pytest.raises(ImproperlyConfigured, match="needs KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD") as refused:
        client_options()
    assert SASL_PASSWORD not in str(refused.value)


async def test_sasl_password_never_reaches_the_logs(
    kafka_over_tls: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A SASL_SSL client against a broker that cannot do SASL fails; nothing it logs, at any
    level, nor its error, carries the password."""
    sasl_settings(monkeypatch, KAFKA_SASL_PASSWORD=SASL_PASSWORD)
    with contextlib.ExitStack() as debug_everywhere:  # settings.LOGGING holds these two at INFO / WARNING
        for logger in (None, "gateway", "aiokafka"):
            debug_everywhere.enter_context(caplog.at_level(logging.DEBUG, logger=logger))
        producer = AIOKafkaProducer(**producer_options())
        with pytest.raises(Exception) as failed:  # any failure: Tansu has no SASL
            await within(producer.start())
        await producer.stop()
    assert caplog.records, "the client logged nothing: the check below would prove nothing"
    assert SASL_PASSWORD not in caplog.text
    assert SASL_PASSWORD not in repr(failed.value)
