"""Golden tables: what each real charger puts on the wire and what it means, from outside our code.

Every number in these tables comes from a vendor document, from the published register maps in
../shared/reference/charger_register_maps.json (+ .md), or from another open implementation
(evcc first). The register words are written out literally: they were worked out by hand or with
Python's `struct` in a scratch shell, never with gateway code, so a wrong scale, word order, mask,
address or unit id in a shipped profile (or a codec bug) makes tests/test_golden.py fail.

One module per charger (`TABLES` below lists them); each says where its values come from.
"""

from dataclasses import dataclass, field

# The evcc commit the reference JSON was generated from (its `generated_from`).
EVCC_REFERENCE_COMMIT = "b29b49e3056ead3c99ff1f4711b2bb17083114b0"


@dataclass(frozen=True)
class Read:
    """Words a charger answers for one value, and the engineering value they stand for."""

    register: str  # the profile's register name
    address: int  # 0-based PDU address in the published map
    function: str  # "holding" (FC03) or "input" (FC04), as the map says
    words: tuple[int, ...]  # the register words on the wire, written out by hand
    value: float | int | str | bytes | None  # what a correct decoder makes of them (None: not available)
    source: str  # where the words and their meaning come from
    role: str = ""  # the telemetry role the profile must feed with it ("" = not in telemetry)
    unit_id: int | None = None  # None: the charge point's own unit id
    live: bool = True  # served end to end (one live row per register; others are decode-only examples)


@dataclass(frozen=True)
class Status:
    """Status register words and the IEC 61851 state another implementation reads from them."""

    words: dict[str, tuple[int, ...]]  # profile register name -> words on the wire
    iec61851_state: str  # "A", "B", "C"; ignored when faulted
    source: str
    faulted: bool = False  # the source calls it an error: status faulted, IEC state E or F


@dataclass(frozen=True)
class Write:
    """The exact request a charger must receive for one action."""

    action: str  # "limit 10 A" or "pause"
    register: str  # the profile's register name
    address: int
    value: float  # engineering value handed to the product's encoder
    words: tuple[int, ...]  # the register words the charger must receive
    function_codes: tuple[int, ...]  # write function codes the vendor accepts for this request
    source: str
    unit_id: int | None = None  # None: the charge point's own unit id


@dataclass(frozen=True)
class GoldenTable:
    """One charger's golden rows."""

    slug: str
    unit_id: int  # the charge point's unit id per the published map
    sources: dict[str, str]  # source id -> where it is (file, commit, page)
    reads: tuple[Read, ...]
    statuses: tuple[Status, ...]
    writes: tuple[Write, ...]
    live_iec61851_state: str  # IEC state of the status words among `reads` (served end to end)
    notes: tuple[str, ...] = field(default_factory=tuple)  # disagreements between sources, left open


def all_tables() -> list[GoldenTable]:
    """Every charger's table (imported here so a new module cannot be forgotten by the tests)."""
    from tests.golden import (
        abb_terra_ac,
        alfen_eve,
        keba_p30,
        mennekes_amtron_hcc3,
        schneider_evlink_pro_ac,
        vestel_evc04,
        webasto_next,
    )

    return [
        module.TABLE
        for module in (
            alfen_eve,
            abb_terra_ac,
            keba_p30,
            webasto_next,
            vestel_evc04,
            schneider_evlink_pro_ac,
            mennekes_amtron_hcc3,
        )
    ]
