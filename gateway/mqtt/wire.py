"""The lean MQTT 3.1.1 codec the poller publishes with: bytes in, bytes out, no I/O.

Only what a publishing client needs (OASIS MQTT 3.1.1, sections 2 and 3): CONNECT, CONNACK,
PUBLISH QoS 0/1, PUBACK, PINGREQ/PINGRESP, DISCONNECT. Why not aiomqtt/paho: a publish costs them
60-110 us of CPU, the poller's whole budget is ~80 us per record (docs: DESIGN8, "Measured").
Incoming bytes are parsed in bulk: one call turns a buffer of thousands of PUBACKs into their
packet ids.
"""

from dataclasses import dataclass

# Control packet types (the fixed header's high nibble), section 2.2.1.
CONNECT, CONNACK, PUBLISH, PUBACK = 1, 2, 3, 4
PINGREQ, PINGRESP, DISCONNECT = 12, 13, 14

PROTOCOL_LEVEL = 4  # MQTT 3.1.1
MAX_REMAINING_LENGTH = 268_435_455  # four varint bytes, section 2.2.3
MAX_PACKET_ID = 65_535

PINGREQ_PACKET = b"\xc0\x00"
PINGRESP_PACKET = b"\xd0\x00"
DISCONNECT_PACKET = b"\xe0\x00"

# CONNACK return codes, section 3.2.2.3, in the words an operator can act on.
CONNACK_REASONS = {
    1: "unacceptable protocol version (the broker does not speak MQTT 3.1.1)",
    2: "identifier rejected (the client id is not allowed)",
    3: "server unavailable",
    4: "bad user name or password",
    5: "not authorised",
}


class MalformedPacket(ValueError):
    """Bytes from the broker that are not MQTT 3.1.1; the connection cannot go on."""


class ConnectionRefused(Exception):
    """The broker answered CONNECT with a non-zero return code."""

    def __init__(self, code: int) -> None:
        self.code = code
        super().__init__(CONNACK_REASONS.get(code, f"return code {code}"))


@dataclass(frozen=True, slots=True)
class Packet:
    """One control packet from the broker, other than PUBACK (those come out as bare ids)."""

    kind: int  # CONNACK, PINGRESP, ...
    flags: int  # the fixed header's low nibble
    body: bytes  # variable header + payload


@dataclass(frozen=True, slots=True)
class Will:
    """What the broker publishes for us when the connection dies without a DISCONNECT."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True


def encode_remaining_length(length: int) -> bytes:
    """The fixed header's variable-length integer: 7 bits per byte, low group first."""
    if not 0 <= length <= MAX_REMAINING_LENGTH:
        raise ValueError(f"remaining length {length} outside 0..{MAX_REMAINING_LENGTH}")
    if length < 128:  # every PINGREQ/PUBACK, and short PUBLISHes: the common case, no loop
        return bytes((length,))
    out = bytearray()
    while True:
        length, digit = divmod(length, 128)
        if length:
            out.append(digit | 0x80)
        else:
            out.append(digit)
            return bytes(out)


def decode_remaining_length(buffer: bytes | bytearray | memoryview, start: int) -> tuple[int, int] | None:
    """(length, offset of the first byte after it), or None if the buffer ends inside it."""
    value, shift = 0, 0
    for index in range(start, min(start + 4, len(buffer))):
        byte = buffer[index]
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, index + 1
        shift += 7
    if len(buffer) - start >= 4:
        raise MalformedPacket("remaining length longer than four bytes")
    return None


def _string(value: str | bytes) -> bytes:
    """A UTF-8 string or binary field with its two-byte length, section 1.5.3."""
    data = value.encode() if isinstance(value, str) else value
    if len(data) > 0xFFFF:
        raise ValueError(f"field of {len(data)} bytes is longer than MQTT's 65,535")
    return len(data).to_bytes(2, "big") + data


def encode_connect(
    client_id: str,
    *,
    keepalive_s: int,
    clean_session: bool = True,
    will: Will | None = None,
    username: str | None = None,
    password: str | None = None,
) -> bytes:
    """CONNECT, section 3.1."""
    if not 0 <= keepalive_s <= 0xFFFF:
        raise ValueError(f"keepalive {keepalive_s} s outside 0..65535")
    if password is not None and username is None:
        raise ValueError("MQTT 3.1.1 sends a password only with a user name")
    flags = 0x02 if clean_session else 0
    payload = [_string(client_id)]
    if will is not None:
        if will.qos not in (0, 1, 2):
            raise ValueError(f"will QoS {will.qos}")
        flags |= 0x04 | (will.qos << 3) | (0x20 if will.retain else 0)
        payload += [_string(validate_topic(will.topic)), _string(will.payload)]
    if username is not None:
        flags |= 0x80
        payload.append(_string(username))
    if password is not None:
        flags |= 0x40
        payload.append(_string(password))
    body = b"\x00\x04MQTT" + bytes((PROTOCOL_LEVEL, flags)) + keepalive_s.to_bytes(2, "big") + b"".join(payload)
    return b"\x10" + encode_remaining_length(len(body)) + body


def parse_connack(packet: Packet) -> bool:
    """Whether the broker kept a session for us; raises ConnectionRefused for a refusal."""
    if packet.kind != CONNACK or len(packet.body) != 2:
        raise MalformedPacket(f"expected CONNACK, got packet type {packet.kind} of {len(packet.body)} bytes")
    session_present, code = packet.body
    if code:
        raise ConnectionRefused(code)
    return bool(session_present & 0x01)


def validate_topic(topic: str) -> str:
    """A topic we may publish to: not empty, no wildcards or NUL, at most 65,535 bytes (section 4.7)."""
    if not topic or "+" in topic or "#" in topic or "\0" in topic or len(topic.encode()) > 0xFFFF:
        raise ValueError(f"cannot publish to MQTT topic {topic!r}")
    return topic


def encode_topic(topic: str) -> bytes:
    """The topic field of a PUBLISH (length + UTF-8), checked once; callers cache it per topic."""
    return _string(validate_topic(topic))


def encode_publish(
    encoded_topic: bytes, payload: bytes, *, qos: int = 1, packet_id: int = 0, retain: bool = False, dup: bool = False
) -> bytes:
    """PUBLISH, section 3.3; `encoded_topic` from encode_topic(). A packet id only for QoS 1."""
    if qos == 1:
        if not 1 <= packet_id <= MAX_PACKET_ID:
            raise ValueError(f"packet id {packet_id} outside 1..65535")
        variable = encoded_topic + packet_id.to_bytes(2, "big")
    elif qos == 0:
        variable = encoded_topic
    else:
        raise ValueError(f"QoS {qos}: this client publishes QoS 0 or 1")
    first = 0x30 | (0x08 if dup else 0) | (qos << 1) | (1 if retain else 0)
    return bytes((first,)) + encode_remaining_length(len(variable) + len(payload)) + variable + payload


def publish_packet_id(packet: Packet) -> int | None:
    """The packet id of a received PUBLISH: 0 for QoS 0, None for QoS 2 (which needs PUBREC) or a bad one."""
    qos = (packet.flags >> 1) & 0x03
    if qos == 0:
        return 0
    topic_length = int.from_bytes(packet.body[:2], "big")
    if qos != 1 or len(packet.body) < topic_length + 4:
        return None
    return int.from_bytes(packet.body[2 + topic_length : 4 + topic_length], "big")


def encode_puback(packet_id: int) -> bytes:
    """PUBACK, section 3.4 (the broker sends these; here for tests and symmetry)."""
    return b"\x40\x02" + packet_id.to_bytes(2, "big")


def read_packets(buffer: bytes | bytearray) -> tuple[list[int], list[Packet], int]:
    """Split what the broker sent: (PUBACK packet ids in order, other packets, bytes consumed).

    An incomplete packet at the end stays for the next call (the caller keeps buffer[consumed:]).
    PUBACKs, thousands per read under load, take a fast path: no object per packet.
    """
    acked: list[int] = []
    others: list[Packet] = []
    size = len(buffer)
    position = 0
    while position < size:
        first = buffer[position]
        if first == 0x40:  # PUBACK: always 0x40 0x02 id id
            if position + 4 > size:
                break
            if buffer[position + 1] != 2:
                raise MalformedPacket(f"PUBACK with remaining length {buffer[position + 1]}")
            acked.append((buffer[position + 2] << 8) | buffer[position + 3])
            position += 4
            continue
        header = decode_remaining_length(buffer, position + 1)
        if header is None:
            break
        length, start = header
        if start + length > size:
            break
        kind = first >> 4
        if kind in (0, 15):
            raise MalformedPacket(f"reserved packet type {kind}")
        others.append(Packet(kind, first & 0x0F, bytes(buffer[start : start + length])))
        position = start + length
    return acked, others, position
