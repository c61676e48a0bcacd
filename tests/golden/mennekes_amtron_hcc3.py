"""Mennekes AMTRON Xtra/Premium (HCC3): golden reads, status and writes.

Values come from:
- evcc_hcc3: evcc-io/evcc charger/mennekes-hcc3.go (reference commit b29b49e3; read at stored
  commit 0316f24a): telemetry with ReadInputRegisters (FC04), unit id 255; status 0x0302:
  1/2 -> A, 3/4 -> B, 5/6 -> C; power 0x030F and session energy 0x030D with
  rs485.RTUUint32ToFloat64Swapped (low word first), energy / 1e3 (Wh -> kWh); name 0x0311 with
  encoding.StringLsbFirst (bytes swapped within each register); 0x0400 written with
  WriteSingleRegister (FC06), 0 to disable.
- mbmd: volkszaehler/mbmd encoding.BigEndianUint32Swapped(b) = b[2]<<24 | b[3]<<16 | b[0]<<8 | b[1];
  encoding/string.go StringLsbFirst swaps b[i], b[i+1].
- nymea_hcc3: nymea/nymea-plugins-modbus mennekes/amtron-hcc3-registers.json @ fcffebb4 (via the
  reference JSON): error code enum (0x0304), 32-bit values "LittleEndian".
Words: big-endian words from struct.pack(">I") in a scratch shell, written low word first; the
string's byte pairs swapped by hand ("AM" -> 0x4D41).
"""

from tests.golden import EVCC_REFERENCE_COMMIT, GoldenTable, Read, Status, Write

SOURCES = {
    "evcc_hcc3": f"evcc-io/evcc charger/mennekes-hcc3.go @ {EVCC_REFERENCE_COMMIT}"
    ""
    " (read at 0316f24abba2075c8ff85d4d8f5dbbf2b66dbaf1)",
    "mbmd": "volkszaehler/mbmd meters/rs485/transform.go"
    ", encoding/string.go (RTUUint32ToFloat64Swapped, StringLsbFirst)",
    "nymea_hcc3": "nymea/nymea-plugins-modbus mennekes/amtron-hcc3-registers.json"
    " @ fcffebb46865b603bbdfd840529eec07e33de45b",
    "reference": "../shared/reference/charger_register_maps.json chargers[mennekes-amtron-hcc3]",
}


def cp_state(code: int) -> dict[str, tuple[int, ...]]:
    return {"cp_signal_state": (code,)}


TABLE = GoldenTable(
    slug="mennekes-amtron-hcc3",
    unit_id=255,  # evcc_hcc3 default ID 255
    sources=SOURCES,
    reads=(
        # 11040 W = 0x00002B20 -> low word first: 0x2B20 0x0000
        Read("active_power", 0x030F, "input", (0x2B20, 0x0000), 11040, "evcc_hcc3, mbmd (swapped)", "power_w"),
        # 123456 Wh = 0x0001E240 -> 0xE240 0x0001 (evcc ChargedEnergy / 1e3 -> kWh)
        Read(
            "session_energy",
            0x030D,
            "input",
            (0xE240, 0x0001),
            123456,
            "evcc_hcc3, mbmd (swapped)",
            "session_energy_wh",
        ),
        # error code 13 = overtemperature (nymea_hcc3 enum)
        Read("error_code", 0x0304, "input", (0x000D,), 13, "nymea_hcc3", "error_code", live=False),
        # 0 = no error (nymea_hcc3); served end to end
        Read("error_code", 0x0304, "input", (0x0000,), 0, "nymea_hcc3", "error_code"),
        # AMTRON state 3 = charging (nymea_hcc3, aggsoft)
        Read("amtron_state", 0x0305, "input", (0x0003,), 3, "nymea_hcc3"),
        # control pilot 6 = C2 (evcc: 5/6 -> C)
        Read("cp_signal_state", 0x0302, "input", (0x0006,), 6, "evcc_hcc3, nymea_hcc3", "vendor_status"),
        # 0x0400 current limit 16 A = 0x0010 (evcc Enabled reads it with FC03)
        Read("customer_current_limitation", 0x0400, "holding", (0x0010,), 16, "evcc_hcc3", "current_limit_a"),
        # "AMTRON" with bytes swapped in each register: "AM" -> 0x4D41, "TR" -> 0x5254, "ON" -> 0x4E4F (11 registers)
        Read(
            "wallbox_name",
            0x0311,
            "input",
            (0x4D41, 0x5254, 0x4E4F) + (0x0000,) * 8,
            "AMTRON",
            "evcc_hcc3, mbmd StringLsbFirst",
        ),
    ),
    statuses=(
        Status(cp_state(1), "A", "evcc_hcc3: 1 (A1) -> A"),
        Status(cp_state(2), "A", "evcc_hcc3: 2 (A2) -> A"),
        Status(cp_state(3), "B", "evcc_hcc3: 3 (B1) -> B"),
        Status(cp_state(4), "B", "evcc_hcc3: 4 (B2) -> B"),
        Status(cp_state(5), "C", "evcc_hcc3: 5 (C1) -> C"),
        Status(cp_state(6), "C", "evcc_hcc3: 6 (C2) -> C"),
    ),
    writes=(
        # evcc MaxCurrent: WriteSingleRegister(0x0400, 10) -> 0x000A
        Write("limit 10 A", "customer_current_limitation", 0x0400, 10, (0x000A,), (6,), "evcc_hcc3"),
        # evcc Enable(false): WriteSingleRegister(0x0400, 0)
        Write("pause", "customer_current_limitation", 0x0400, 0, (0x0000,), (6,), "evcc_hcc3"),
    ),
    live_iec61851_state="C",
    notes=(
        "CP states 7/8 (D1/D2): the reference .md says evcc maps them to error; the evcc file read here"
        " returns StatusD. Left out of the table.",
        "Serial 0x030B: evcc Diagnose decodes binary.LittleEndian.Uint32 (DCBA), the profile low word first"
        " (CDAB); not in telemetry, left out.",
    ),
)
