"""The lean MQTT 3.1.1 codec, against the OASIS spec's own bytes and against an independent decoder (amqtt's).

Spec: MQTT Version 3.1.1, OASIS Standard, 29 October 2014 (section numbers in the test names).
The round trip through a real Mosquitto is in test_mqtt_transport.py.
"""

import pytest
from amqtt.adapters import BufferReader
from amqtt.mqtt.connect import ConnectPacket
from amqtt.mqtt.publish import PublishPacket

from gateway.mqtt import wire

# Table 2.4, "Size of Remaining Length field": the boundaries of each byte count.
REMAINING_LENGTH_EXAMPLES = [
    (0, b"\x00"),
    (127, b"\x7f"),
    (128, b"\x80\x01"),
    (16_383, b"\xff\x7f"),
    (16_384, b"\x80\x80\x01"),
    (2_097_151, b"\xff\xff\x7f"),
    (2_097_152, b"\x80\x80\x80\x01"),
    (268_435_455, b"\xff\xff\xff\x7f"),
]


@pytest.mark.parametrize(("length", "encoded"), REMAINING_LENGTH_EXAMPLES)
def test_remaining_length_2_2_3(length: int, encoded: bytes) -> None:
    assert wire.encode_remaining_length(length) == encoded
    assert wire.decode_remaining_length(b"\x30" + encoded + b"rest", 1) == (length, 1 + len(encoded))


def test_remaining_length_limits() -> None:
    with pytest.raises(ValueError, match="outside"):
        wire.encode_remaining_length(268_435_456)
    assert wire.decode_remaining_length(b"\x30\xff\xff", 1) is None  # more bytes to come
    with pytest.raises(wire.MalformedPacket, match="four bytes"):
        wire.decode_remaining_length(b"\x30\xff\xff\xff\xff\x01", 1)


def test_connect_variable_header_example_3_1_2_10() -> None:
    """Figure 3.6: protocol name, level 4, flags 0xCE (user, password, will QoS 1, will, clean), keepalive 10."""
    packet = wire.encode_connect(
        "c", keepalive_s=10, will=wire.Will("w", b"m", qos=1, retain=False), username="u", password="p"
    )
    variable_header = bytes([0x00, 0x04, 0x4D, 0x51, 0x54, 0x54, 0x04, 0xCE, 0x00, 0x0A])
    assert packet[0] == 0x10
    assert packet[2:12] == variable_header
    # payload, section 3.1.3: client id, will topic, will message, user name, password; each length-prefixed
    assert packet[12:] == b"\x00\x01c" + b"\x00\x01w" + b"\x00\x01m" + b"\x00\x01u" + b"\x00\x01p"
    assert packet[1] == len(packet) - 2


def test_connect_flags_3_1_2_3() -> None:
    bare = wire.encode_connect("id", keepalive_s=60)
    assert bare[9] == 0x02  # clean session only
    retained_will = wire.encode_connect("id", keepalive_s=60, will=wire.Will("t", b"x", qos=1, retain=True))
    assert retained_will[9] == 0x02 | 0x04 | 0x08 | 0x20
    user_only = wire.encode_connect("id", keepalive_s=60, username="u", clean_session=False)
    assert user_only[9] == 0x80
    with pytest.raises(ValueError, match="password only with a user name"):
        wire.encode_connect("id", keepalive_s=60, password="p")  # 3.1.2.9


def test_connect_decoded_by_amqtt() -> None:
    """Another implementation's decoder reads every field back."""
    packet = wire.encode_connect(
        "evdash-poller-p1",
        keepalive_s=30,
        will=wire.Will("evdash/pollers/p1/state", b'{"state":"offline"}'),
        username="poller",
        password="s3cr\u00e9t",  # UTF-8
    )
    decoded = _amqtt_decode(ConnectPacket, packet)
    assert decoded.variable_header.proto_name == "MQTT"
    assert decoded.variable_header.proto_level == 4
    assert decoded.variable_header.keep_alive == 30
    assert decoded.variable_header.clean_session_flag
    assert decoded.variable_header.will_flag and decoded.variable_header.will_retain_flag
    assert decoded.variable_header.will_qos == 1
    assert decoded.payload.client_id == "evdash-poller-p1"
    assert decoded.payload.will_topic == "evdash/pollers/p1/state"
    assert decoded.payload.will_message == b'{"state":"offline"}'
    assert decoded.payload.username == "poller"
    assert decoded.payload.password == "s3cr\u00e9t"


def test_publish_variable_header_example_3_3_2_3() -> None:
    """Table 3.3: topic "a/b", packet identifier 10."""
    packet = wire.encode_publish(wire.encode_topic("a/b"), b"", qos=1, packet_id=10)
    assert packet == b"\x32\x07" + bytes([0x00, 0x03, 0x61, 0x2F, 0x62, 0x00, 0x0A])


def test_publish_fixed_header_flags_3_3_1() -> None:
    topic = wire.encode_topic("t")
    assert wire.encode_publish(topic, b"x", qos=0)[0] == 0x30  # no packet id at QoS 0 (3.3.2.2)
    assert wire.encode_publish(topic, b"x", qos=0) == b"\x30\x04\x00\x01tx"
    assert wire.encode_publish(topic, b"x", qos=1, packet_id=1, retain=True)[0] == 0x33
    assert wire.encode_publish(topic, b"x", qos=1, packet_id=1, dup=True)[0] == 0x3A
    for bad_id in (0, 65_536):
        with pytest.raises(ValueError, match="packet id"):
            wire.encode_publish(topic, b"x", qos=1, packet_id=bad_id)
    with pytest.raises(ValueError, match="QoS 2"):
        wire.encode_publish(topic, b"x", qos=2, packet_id=1)


def test_publish_decoded_by_amqtt_with_long_payload() -> None:
    payload = bytes(range(256)) * 100  # 25,600 bytes: a three-byte remaining length
    packet = wire.encode_publish(wire.encode_topic("evdash/depot/cp-1/telemetry"), payload, packet_id=65_535)
    decoded = _amqtt_decode(PublishPacket, packet)
    assert (decoded.topic_name, decoded.packet_id, decoded.qos, decoded.retain_flag) == (
        "evdash/depot/cp-1/telemetry",
        65_535,
        1,
        False,
    )
    assert decoded.data == payload


@pytest.mark.parametrize("topic", ["", "evdash/+/x", "evdash/#", "a\0b"])
def test_topics_one_cannot_publish_to_4_7(topic: str) -> None:
    with pytest.raises(ValueError, match="cannot publish"):
        wire.encode_topic(topic)


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        (1, "unacceptable protocol version"),
        (2, "identifier rejected"),
        (3, "server unavailable"),
        (4, "bad user name or password"),
        (5, "not authorised"),
        (9, "return code 9"),
    ],
)
def test_connack_refusals_3_2_2_3(code: int, reason: str) -> None:
    acked, packets, used = wire.read_packets(bytes([0x20, 0x02, 0x00, code]))
    assert (acked, used) == ([], 4)
    with pytest.raises(wire.ConnectionRefused, match=reason) as refused:
        wire.parse_connack(packets[0])
    assert refused.value.code == code


def test_connack_accepted_with_session_present_3_2_2_2() -> None:
    _, packets, _ = wire.read_packets(b"\x20\x02\x01\x00")
    assert wire.parse_connack(packets[0]) is True
    _, packets, _ = wire.read_packets(b"\x20\x02\x00\x00")
    assert wire.parse_connack(packets[0]) is False


def test_pubacks_in_bulk_with_a_split_packet_3_4() -> None:
    """Thousands of PUBACKs in one read; a packet cut by the read boundary waits for the next."""
    stream = b"".join(wire.encode_puback(i) for i in range(1, 3001)) + wire.PINGRESP_PACKET + wire.encode_puback(65_535)
    assert wire.encode_puback(10) == b"\x40\x02\x00\x0a"
    cut = len(stream) - 3  # inside the last PUBACK
    acked, packets, used = wire.read_packets(stream[:cut])
    assert acked == list(range(1, 3001))
    assert [p.kind for p in packets] == [wire.PINGRESP]
    assert used == cut - 1  # the last PUBACK's first byte stays
    acked, packets, used = wire.read_packets(stream[used:])
    assert (acked, packets, used) == ([65_535], [], 4)


def test_read_packets_waits_for_a_whole_packet() -> None:
    connack = b"\x20\x02\x00\x00"
    for cut in range(len(connack)):
        assert wire.read_packets(connack[:cut]) == ([], [], 0)


def test_read_packets_rejects_garbage() -> None:
    with pytest.raises(wire.MalformedPacket, match="PUBACK with remaining length 3"):
        wire.read_packets(b"\x40\x03\x00\x01\x00")
    with pytest.raises(wire.MalformedPacket, match="reserved packet type"):
        wire.read_packets(b"\xf0\x00")


def test_fixed_packets_3_12_to_3_14() -> None:
    assert bytes([0xC0, 0x00]) == wire.PINGREQ_PACKET
    assert bytes([0xD0, 0x00]) == wire.PINGRESP_PACKET
    assert bytes([0xE0, 0x00]) == wire.DISCONNECT_PACKET


def _amqtt_decode(packet_class: type, data: bytes):
    import asyncio

    return asyncio.run(packet_class.from_stream(BufferReader(data)))


def test_packet_id_of_a_received_publish_3_3_2_2() -> None:
    topic = wire.encode_topic("a/b")
    packets = wire.read_packets(
        wire.encode_publish(topic, b"x", qos=0)
        + wire.encode_publish(topic, b"x", qos=1, packet_id=10)
        + b"\x34\x07" + bytes([0x00, 0x03, 0x61, 0x2F, 0x62, 0x00, 0x0B])  # QoS 2: not ours to acknowledge
    )[1]  # fmt: skip
    assert [wire.publish_packet_id(p) for p in packets] == [0, 10, None]
