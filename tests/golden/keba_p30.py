"""KEBA KeContact P30: golden reads, status and writes.

Values come from:
- keba_guide: "KeContact P30 Modbus TCP Programmers Guide" (V1.02 pages via manualshive, cited by the
  reference JSON): every readable value is a UINT32 in 2 holding registers, high word first; worked
  examples "error code 262144 = 0x40000 = error group 4" (p. 10) and "firmware 50990336 = 0x30A0D00
  = 3.10.14" (p. 12); currents and max current in mA, power in mW, voltages in V; writes are UINT16:
  5004 current in mA, 5014 enable (0 = disable, stops the session); unit id 255.
- evcc_keba: evcc-io/evcc charger/keba-modbus.go (reference commit b29b49e3; read at stored commit
  02ee06ec): binary.BigEndian.Uint32 on 2 registers; currents / 1e3; power / 1e3 (mW -> W); energy
  / 1e4 (0.1 Wh -> kWh; KEBA guide V1.06 corrects the unit to 0.1 Wh); status: (cable 1004 & 4) == 0
  -> A, else charging state 1000 == 3 -> C, else B; MaxCurrentMillis: WriteSingleRegister(5004,
  uint16(A * 1000)); Enable(false) on a P30: WriteSingleRegister(5014, 0).
- openems_keba_note (via the reference JSON): reads FC3 with at most 2 words, writes FC6 only, no FC16.
Words: big-endian uint32 / uint16, worked out with struct.pack(">I"/">H") in a scratch shell.
"""

from tests.golden import EVCC_REFERENCE_COMMIT, GoldenTable, Read, Status, Write

SOURCES = {
    "keba_guide": "KEBA P30 Modbus TCP Programmers Guide V1.02 pp. 10-16 (manualshive.com, see the reference JSON)",
    "evcc_keba": f"evcc-io/evcc charger/keba-modbus.go @ {EVCC_REFERENCE_COMMIT}"
    " (read at 02ee06ec3523adbcb539dac9870ef1efc5a86ccd)",
    "keba_rust": "reference JSON source keba_rust: 5016 failsafe current (mA), 5018 failsafe timeout (s), write-only",
    "openems_keba_note": "reference JSON source openems_keba_note: FC3 <= 2 words, FC6 writes only",
    "reference": "../shared/reference/charger_register_maps.json chargers[keba-p30]",
}


def u32(value: int) -> tuple[int, int]:
    """Spelled out in each row; this only splits a literal into its high and low word."""
    return (value >> 16, value & 0xFFFF)


TABLE = GoldenTable(
    slug="keba-p30",
    unit_id=255,  # keba_guide / evcc: unit id must be 255
    sources=SOURCES,
    reads=(
        # keba_guide worked example: 262144 = 0x00040000 -> words 0x0004 0x0000
        Read(
            "error_code",
            1006,
            "holding",
            (0x0004, 0x0000),
            262144,
            "keba_guide p. 10 example",
            "error_code",
            live=False,
        ),
        # 0 = no error (keba_guide p. 10); served end to end so the live status is evcc's
        Read("error_code", 1006, "holding", (0x0000, 0x0000), 0, "keba_guide p. 10", "error_code"),
        # keba_guide worked example: 50990336 = 0x030A0D00 -> words 0x030A 0x0D00
        Read("firmware_version", 1018, "holding", (0x030A, 0x0D00), 50990336, "keba_guide p. 12 example"),
        # 16000 mA = 0x00003E80 -> 16 A (evcc / 1e3)
        Read("current_l1", 1008, "holding", (0x0000, 0x3E80), 16.0, "keba_guide p. 10, evcc_keba", "current_l1_a"),
        # 15500 mA = 0x00003C8C
        Read("current_l2", 1010, "holding", (0x0000, 0x3C8C), 15.5, "keba_guide p. 10, evcc_keba", "current_l2_a"),
        # 6000 mA = 0x00001770
        Read("current_l3", 1012, "holding", (0x0000, 0x1770), 6.0, "keba_guide p. 10, evcc_keba", "current_l3_a"),
        # 11040000 mW = 0x00A87500 -> 11040 W (evcc currentPower / 1e3)
        Read("active_power", 1020, "holding", (0x00A8, 0x7500), 11040.0, "keba_guide p. 12, evcc_keba", "power_w"),
        # 123456789 × 0.1 Wh = 0x075BCD15 -> 12345678.9 Wh (evcc / 1e4 -> kWh)
        Read(
            "total_energy",
            1036,
            "holding",
            (0x075B, 0xCD15),
            12345678.9,
            "evcc_keba (energyFactor 1e4), keba_guide V1.06",
            "energy_total_wh",
        ),
        # 52345 × 0.1 Wh = 0x0000CC79 -> 5234.5 Wh (same unit as 1036)
        Read(
            "session_energy",
            1502,
            "holding",
            (0x0000, 0xCC79),
            5234.5,
            "reference (1502 same unit as 1036), evcc_keba",
            "session_energy_wh",
        ),
        # 230 V = 0x000000E6 (keba_guide p. 13: volts)
        Read("voltage_l1", 1040, "holding", (0x0000, 0x00E6), 230, "keba_guide p. 13", "voltage_l1_v"),
        # 231 V = 0x000000E7
        Read("voltage_l2", 1042, "holding", (0x0000, 0x00E7), 231, "keba_guide p. 13", "voltage_l2_v"),
        # 229 V = 0x000000E5
        Read("voltage_l3", 1044, "holding", (0x0000, 0x00E5), 229, "keba_guide p. 13", "voltage_l3_v"),
        # 16000 mA = 0x00003E80 -> 16 A (reference: 1100 max charging current in mA)
        Read(
            "max_charging_current",
            1100,
            "holding",
            (0x0000, 0x3E80),
            16.0,
            "reference (keba_rust, keba_live)",
            "current_limit_a",
        ),
        # charging state 3 = charging (evcc comment list)
        Read("charging_state", 1000, "holding", (0x0000, 0x0003), 3, "evcc_keba", "vendor_status"),
        # cable state 7 = cable at station and EV, locked (evcc comment list)
        Read("cable_state", 1004, "holding", (0x0000, 0x0007), 7, "evcc_keba"),
    ),
    statuses=(
        Status({"cable_state": u32(0), "charging_state": u32(1)}, "A", "evcc_keba: cable 0 & 4 == 0 -> A"),
        Status({"cable_state": u32(1), "charging_state": u32(1)}, "A", "evcc_keba: cable 1 & 4 == 0 -> A"),
        Status({"cable_state": u32(3), "charging_state": u32(2)}, "A", "evcc_keba: cable 3 & 4 == 0 -> A"),
        Status(
            {"cable_state": u32(5), "charging_state": u32(1)},
            "B",
            "evcc_keba: cable 5 & 4 != 0, state 1 -> B (waiting for authorization)",
        ),
        Status({"cable_state": u32(5), "charging_state": u32(2)}, "B", "evcc_keba: cable 5, state 2 -> B"),
        Status({"cable_state": u32(7), "charging_state": u32(3)}, "C", "evcc_keba: cable 7, state 3 -> C"),
        Status({"cable_state": u32(7), "charging_state": u32(5)}, "B", "evcc_keba: cable 7, state 5 -> B"),
    ),
    writes=(
        # evcc MaxCurrentMillis: uint16(10 * 1000) = 10000 = 0x2710 via WriteSingleRegister (FC06)
        Write("limit 10 A", "set_charging_current", 5004, 10, (0x2710,), (6,), "keba_guide p. 16, evcc_keba, openems"),
        # P30 pause: evcc Enable(false) writes 0 to 5014 (keba_guide: 0 = disable, stops the session)
        Write("pause", "enable_charging_station", 5014, 0, (0x0000,), (6,), "keba_guide p. 16, evcc_keba, openems"),
        # keba_rust: 5016 failsafe current in mA (UINT16): 10 A = 10000 = 0x2710; FC06 (openems: no FC16)
        Write("failsafe 10 A", "set_failsafe_current", 5016, 10, (0x2710,), (6,), "keba_rust, openems"),
        # keba_rust / evcc_keba: 5018 failsafe timeout in s: 30 = 0x001E
        Write("failsafe timeout 30 s", "set_failsafe_timeout", 5018, 30, (0x001E,), (6,), "keba_rust, evcc_keba"),
    ),
    live_iec61851_state="C",  # cable 7, state 3 -> C (evcc_keba)
    notes=(
        "keba_guide's firmware example names 0x30A0D00 '3.10.14' although its third byte is 0x0D = 13"
        " (evcc Diagnose prints b[0].b[1].b[2] = 3.10.13); the table checks the number 50990336 only.",
        "Energy unit: guide V1.02/V1.04 say Wh, V1.06+, evcc and a live capture 0.1 Wh (used here).",
        "evcc does not use 1502 as session energy: KEBA does not reset it on a new plug-in.",
    ),
)
