"""Request planning: group a profile's registers into the fewest Modbus reads within protocol limits."""

from dataclasses import dataclass

from gateway.profiles.spec import ProfileSpec, RegisterSpec

MAX_READ_REGISTERS = 125  # FC03/FC04 limit, Modbus Application Protocol V1.1b3 §6.3/6.4
MAX_READ_BITS = 2000  # FC01/FC02 limit, §6.1/6.2


@dataclass(frozen=True)
class ReadRequest:
    """One Modbus read and the registers its response carries."""

    function: str
    address: int
    count: int
    registers: tuple[RegisterSpec, ...]


def plan_reads(
    profile: ProfileSpec, poll_groups: tuple[str, ...], *, max_gap: int | None = None
) -> list[ReadRequest]:
    """Plan the reads for the given poll groups: contiguous runs, gaps up to max_gap, size limits."""
    gap = profile.max_gap if max_gap is None else max_gap
    wanted = sorted(
        (reg for reg in profile.registers if reg.poll_group in poll_groups),
        key=lambda reg: (reg.function, reg.address),
    )
    requests: list[ReadRequest] = []
    batch: list[RegisterSpec] = []
    for register in wanted:
        if batch and _fits(batch, register, gap):
            batch.append(register)
            continue
        if batch:
            requests.append(_request(batch))
        batch = [register]
    if batch:
        requests.append(_request(batch))
    return requests


def _fits(batch: list[RegisterSpec], register: RegisterSpec, gap: int) -> bool:
    first = batch[0]
    if register.function != first.function:
        return False
    end = max(reg.address + reg.count for reg in batch)
    limit = MAX_READ_BITS if first.is_bit_function else MAX_READ_REGISTERS
    return register.address - end <= gap and register.address + register.count - first.address <= limit


def _request(batch: list[RegisterSpec]) -> ReadRequest:
    start = batch[0].address
    end = max(reg.address + reg.count for reg in batch)
    return ReadRequest(batch[0].function, start, end - start, tuple(batch))
