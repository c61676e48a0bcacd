"""aiokafka client options from settings: plaintext for the embedded broker, SASL_SSL for Confluent Cloud."""

import ssl
from typing import Any

from django.core.exceptions import ImproperlyConfigured

from gateway.conf import setting


def client_options() -> dict[str, Any]:
    """Connection and security options shared by producers, consumers and the admin client."""
    protocol = setting("KAFKA_SECURITY_PROTOCOL").upper()
    options: dict[str, Any] = {
        "bootstrap_servers": setting("KAFKA_BOOTSTRAP_SERVERS"),
        "client_id": setting("KAFKA_CLIENT_ID"),
        "security_protocol": protocol,
    }
    if protocol in ("SSL", "SASL_SSL"):
        cafile = setting("KAFKA_SSL_CAFILE") or None
        options["ssl_context"] = ssl.create_default_context(cafile=cafile)
    if protocol.startswith("SASL"):
        username, password = setting("KAFKA_SASL_USERNAME"), setting("KAFKA_SASL_PASSWORD")
        if not username or not password:
            raise ImproperlyConfigured(
                f"KAFKA_SECURITY_PROTOCOL={protocol} needs KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD "
                "(the Confluent Cloud API key and secret)."
            )
        options.update(
            sasl_mechanism=setting("KAFKA_SASL_MECHANISM"),
            sasl_plain_username=username,
            sasl_plain_password=password,
        )
    elif protocol not in ("PLAINTEXT", "SSL"):
        raise ImproperlyConfigured(f"Unknown KAFKA_SECURITY_PROTOCOL {protocol!r}.")
    return options


def producer_options() -> dict[str, Any]:
    """Durable, ordered per key: acks=all; idempotence where the broker supports it."""
    return client_options() | {
        "acks": "all",
        "enable_idempotence": setting("KAFKA_ENABLE_IDEMPOTENCE"),
        "linger_ms": 5,
        "compression_type": None,
        "request_timeout_ms": 15000,
    }
