"""Request planning: group a profile's registers into the fewest Modbus reads within protocol limits.

Rules, in order: write-only registers are never read; registers inside a profile's explicit read
block are read with that block, exactly as declared; the rest are grouped per unit id and
function into runs whose gaps are at most `max_gap` registers and whose size is within the
protocol limit (125 registers, 2000 bits) or the profile's lower `max_read_registers`; a profile
with `fixed_read_size` (KEBA: exactly 2 registers) gets one read per value of exactly that size.
"""

from dataclasses import dataclass

from gateway.profiles.spec import ProfileSpec, ReadBlock, RegisterSpec

MAX_READ_REGISTERS = 125  # FC03/FC04 limit, Modbus Application Protocol V1.1b3 §6.3/6.4
MAX_READ_BITS = 2000  # FC01/FC02 limit, §6.1/6.2


@dataclass(frozen=True)
class ReadRequest:
    """One Modbus read and the registers its response carries."""

    function: str
    address: int
    count: int
    registers: tuple[RegisterSpec, ...]
    unit_id: int | None = None  # None: the charge point's own unit id


def plan_reads(profile: ProfileSpec, poll_groups: tuple[str, ...], *, max_gap: int | None = None) -> list[ReadRequest]:
    """Plan the reads for the given poll groups."""
    gap = profile.max_gap if max_gap is None else max_gap
    wanted = [reg for reg in profile.registers if reg.poll_group in poll_groups and reg.readable]
    requests: list[ReadRequest] = []
    loose: list[RegisterSpec] = []
    by_block: dict[ReadBlock, list[RegisterSpec]] = {}
    for register in wanted:
        block = _enclosing_block(profile, register)
        if block is None:
            loose.append(register)
        else:
            by_block.setdefault(block, []).append(register)
    for block, registers in by_block.items():
        requests.append(ReadRequest(block.function, block.address, block.count, tuple(registers), block.unit_id))
    loose.sort(key=lambda reg: (reg.unit_id or -1, reg.function, reg.address))
    if profile.fixed_read_size:
        requests += [
            ReadRequest(reg.function, reg.address, profile.fixed_read_size, (reg,), reg.unit_id) for reg in loose
        ]
    else:
        requests += _group(loose, gap, min(profile.max_read_registers, MAX_READ_REGISTERS))
    return sorted(requests, key=lambda r: (r.unit_id or -1, r.function, r.address))


def _enclosing_block(profile: ProfileSpec, register: RegisterSpec) -> ReadBlock | None:
    for block in profile.read_blocks:
        if (
            block.function == register.function
            and block.unit_id == register.unit_id
            and block.address <= register.address
            and register.address + register.count <= block.address + block.count
        ):
            return block
    return None


def _group(registers: list[RegisterSpec], gap: int, register_limit: int) -> list[ReadRequest]:
    requests: list[ReadRequest] = []
    batch: list[RegisterSpec] = []
    for register in registers:
        if batch and _fits(batch, register, gap, register_limit):
            batch.append(register)
            continue
        if batch:
            requests.append(_request(batch))
        batch = [register]
    if batch:
        requests.append(_request(batch))
    return requests


def _fits(batch: list[RegisterSpec], register: RegisterSpec, gap: int, register_limit: int) -> bool:
    first = batch[0]
    if register.function != first.function or register.unit_id != first.unit_id:
        return False
    end = max(reg.address + reg.count for reg in batch)
    limit = MAX_READ_BITS if first.is_bit_function else register_limit
    return register.address - end <= gap and register.address + register.count - first.address <= limit


def _request(batch: list[RegisterSpec]) -> ReadRequest:
    start = batch[0].address
    end = max(reg.address + reg.count for reg in batch)
    return ReadRequest(batch[0].function, start, end - start, tuple(batch), batch[0].unit_id)
