"""Decoding compiled from a profile once: struct formats per read block, folded conversions, status rules.

Same output as decode_block / to_telemetry_fields (the reference, in decode.py), at a fraction of
the cost per record: each planned read gets struct formats that unpack all its values in a few C
calls, each register a precomputed conversion (scaler), and the profile a TelemetryMap.

Usage (the poller; compile when the profile or the plan changes, never per poll):

    decoder = compile_profile(profile, [*fast_plan, *slow_plan])
    ...
    values, errors = decoder.decode_block(request, words)   # per read, like decode_block(...)
    ...
    fields = decoder.telemetry_fields(decoded)              # per record, like to_telemetry_fields(...)

`decoder.decode_block(request, words)` finds the request's compiled block by identity (the same
ReadRequest objects passed to compile_profile) and compiles one it has not seen. For a request at
hand, `compile_block(request).decode(words)` does the same. `decoder.decode(blocks_words)` decodes
a whole record (words per block in `decoder.blocks` order, None for a block not read).
"""

import struct
from collections.abc import Callable, Iterable, Sequence

from gateway.choices import DataType
from gateway.modbus.planner import ReadRequest
from gateway.profiles.codec import STRUCT_CODES, DecodeError, Value, text_from_bytes, wire_orders
from gateway.profiles.decode import TelemetryFields, TelemetryMap, decode_block, scaler
from gateway.profiles.spec import ProfileSpec, RegisterSpec

Convert = Callable[[Value], Value]


class _Layout:
    """Registers that unpack with one struct format from one packing of the block's words."""

    def __init__(self, word_order: str, value_order: str, converted: bool) -> None:
        self.word_order = word_order
        self.value_order = value_order
        self.converted = converted
        self.key = (word_order, value_order, converted)
        self.end = 0  # bytes covered so far; a register that starts before it needs another layout
        self.codes: list[str] = []
        self.names: list[str] = []
        self.converts: list[Convert] = []

    def add(self, name: str, start: int, size: int, code: str, convert: Convert | None) -> None:
        if start > self.end:
            self.codes.append(f"{start - self.end}x")
        self.codes.append(code)
        self.names.append(name)
        if convert is not None:
            self.converts.append(convert)
        self.end = start + size


class BlockDecoder:
    """One planned read, compiled: `decode(words)` returns what decode_block returns for it."""

    def __init__(self, request: ReadRequest) -> None:
        self.request = request
        self.count = request.count
        layouts: list[_Layout] = []
        self.exact = True  # False: a register the struct path cannot express; the reference decodes
        for register in sorted(request.registers, key=lambda reg: reg.address):
            part = _part(register, register.address - request.address, request.count)
            if part is None:
                self.exact = False
                break
            (word_order, value_order), start, size, code, convert = part
            key = (word_order, value_order, convert is not None)
            layout = next((lay for lay in layouts if lay.key == key and lay.end <= start), None)
            if layout is None:
                layout = _Layout(word_order, value_order, convert is not None)
                layouts.append(layout)
            layout.add(register.name, start, size, code, convert)
        # The block's words packed big-endian and, if a register needs it, little-endian too.
        word_orders = sorted({lay.word_order for lay in layouts}, reverse=True)
        self._packs = tuple(struct.Struct(f"{order}{request.count}H").pack for order in word_orders)
        # (which packing, unpack the values, names, conversions or None: values as unpacked)
        self._layouts = tuple(
            (
                word_orders.index(lay.word_order),
                struct.Struct(lay.value_order + "".join(lay.codes)).unpack_from,
                tuple(lay.names),
                tuple(lay.converts) if lay.converted else None,
            )
            for lay in layouts
        )

    def decode(self, words: Sequence[int] | Sequence[bool]) -> tuple[dict[str, Value], dict[str, str]]:
        """(values by name, errors by name) of one read response, as decode_block gives them."""
        if not self.exact or len(words) != self.count:
            return self._reference(words)
        values: dict[str, Value] = {}
        try:
            packs = self._packs  # one packing or two; spelled out, a comprehension costs a frame per call
            packed = (packs[0](*words),) if len(packs) == 1 else (packs[0](*words), packs[1](*words))
            for index, unpack_from, names, converts in self._layouts:
                raws = unpack_from(packed[index])
                if converts is None:
                    values.update(zip(names, raws, strict=True))
                else:
                    for name, convert, raw in zip(names, converts, raws, strict=True):
                        values[name] = convert(raw)
        except (struct.error, DecodeError):
            # A word that is not 16-bit, or text that does not decode: the reference names the
            # culprit register by register, exactly as the poller has always reported it.
            return self._reference(words)
        return values, {}

    def _reference(self, words: Sequence[int] | Sequence[bool]) -> tuple[dict[str, Value], dict[str, str]]:
        return decode_block(self.request.registers, self.request.address, list(words))


def _part(
    register: RegisterSpec, first: int, count: int
) -> tuple[tuple[str, str], int, int, str, Convert | None] | None:
    """(wire orders, byte offset, byte size, struct code, conversion) of one register in its block,
    or None if only the reference decodes it (it sticks out of the block, or its type, byte order
    or bit number is one decode_value refuses, so that every decode reports the same error)."""
    size = 2 * register.count
    if first < 0 or first + register.count > count:
        return None
    data_type = register.data_type
    if data_type in (DataType.BOOL, DataType.BIT):
        # One word (or bit) as is; the byte order does not apply.
        if data_type == DataType.BOOL:
            return (">", ">"), 2 * first, size, "H", bool
        bit = register.bit
        if bit is None or not 0 <= bit <= 15:
            return None
        return (">", ">"), 2 * first, size, "H", lambda word: bool((word >> bit) & 1)
    text = data_type in (DataType.STRING, DataType.BYTES)
    if not text and data_type not in STRUCT_CODES:
        return None
    try:
        orders = wire_orders(register.byte_order, not text and register.count > 1)
    except DecodeError:
        return None
    if data_type == DataType.STRING:
        encoding = register.encoding
        return orders, 2 * first, size, f"{size}s", lambda raw: text_from_bytes(raw, encoding)
    if data_type == DataType.BYTES:
        return orders, 2 * first, size, f"{size}s", None
    return orders, 2 * first, size, STRUCT_CODES[data_type], scaler(register)


def compile_block(request: ReadRequest) -> BlockDecoder:
    """Compile one planned read's decoding."""
    return BlockDecoder(request)


class ProfileDecoder:
    """A profile's planned reads and telemetry mapping, compiled once."""

    def __init__(self, profile: ProfileSpec, requests: Iterable[ReadRequest]) -> None:
        self.profile = profile
        self.blocks = tuple(compile_block(request) for request in requests)
        self.telemetry = TelemetryMap(profile)
        self._by_request = {id(block.request): block for block in self.blocks}

    def block_for(self, request: ReadRequest) -> BlockDecoder:
        """The compiled block of a request (compiled now if it is not one of ours)."""
        block = self._by_request.get(id(request))
        if block is None or block.request is not request:
            block = self._by_request[id(request)] = compile_block(request)
        return block

    def decode_block(
        self, request: ReadRequest, words: Sequence[int] | Sequence[bool]
    ) -> tuple[dict[str, Value], dict[str, str]]:
        """(values by name, errors by name) of one read response, as decode_block gives them."""
        return self.block_for(request).decode(words)

    def telemetry_fields(self, decoded: dict[str, Value]) -> TelemetryFields:
        """Telemetry fields of decoded values, as to_telemetry_fields gives them."""
        return self.telemetry.fields(decoded)

    def decode(self, blocks_words: Sequence[Sequence[int] | Sequence[bool] | None]) -> TelemetryFields:
        """One record: words per block (in `blocks` order; None: not read) to telemetry fields."""
        decoded: dict[str, Value] = {}
        for block, words in zip(self.blocks, blocks_words, strict=True):
            if words is not None:
                decoded.update(block.decode(words)[0])
        return self.telemetry.fields(decoded)


def compile_profile(profile: ProfileSpec, requests: Iterable[ReadRequest]) -> ProfileDecoder:
    """Compile a profile's decoding for its planned reads (e.g. the poller's fast and slow plans)."""
    return ProfileDecoder(profile, requests)
