"""Vestel EVC04: golden reads, status and writes.

Values come from:
- evcc_vestel: evcc-io/evcc charger/vestel.go (reference commit b29b49e3; read at stored commit
  00f776a9): telemetry from input registers (ReadInputRegisters); currents 1008/1010/1012 UINT16
  / 1e3 and voltages 1014/1016/1018 UINT16 V, each read alone; power 1020 BigEndian.Uint32 W;
  total energy 1036 BigEndian.Uint32 / 10 (0.1 kWh -> kWh); session energy 1502 / 1e3 (Wh -> kWh);
  5004 max current read with ReadHoldingRegisters and written with WriteSingleRegister (FC06),
  0 to disable; strings UTF-16BE (utf16BEBytesAsString); status: cable 1004 >= 2 -> B and then
  charging 1001 == 1 -> C, otherwise A. Unit id 255.
- nymea_vestel: nymea/nymea-plugins-modbus vestel/evc04-registers.json @ fcffebb4 (via the reference
  JSON): total energy unit "1/10 kWh"; chargepoint state 1000 enum (OCPP-like).
Words: big-endian; UTF-16BE with "VESTEL".encode("utf-16-be") in a scratch shell.
"""

from tests.golden import EVCC_REFERENCE_COMMIT, GoldenTable, Read, Status, Write

SOURCES = {
    "evcc_vestel": f"evcc-io/evcc charger/vestel.go @ {EVCC_REFERENCE_COMMIT}"
    " (read at 00f776a927bc8db2e07ea3882729ccf5b915b62c)",
    "nymea_vestel": "nymea/nymea-plugins-modbus vestel/evc04-registers.json @ fcffebb46865b603bbdfd840529eec07e33de45b",
    "reference": "../shared/reference/charger_register_maps.json chargers[vestel-evc04]",
}

TABLE = GoldenTable(
    slug="vestel-evc04",
    unit_id=255,  # evcc_vestel: "modbus client id 255"
    sources=SOURCES,
    reads=(
        # 16000 mA = 0x3E80 -> 16 A (evcc / 1e3), input register
        Read("current_l1", 1008, "input", (0x3E80,), 16.0, "evcc_vestel", "current_l1_a"),
        # 15500 mA = 0x3C8C
        Read("current_l2", 1010, "input", (0x3C8C,), 15.5, "evcc_vestel", "current_l2_a"),
        # 6000 mA = 0x1770
        Read("current_l3", 1012, "input", (0x1770,), 6.0, "evcc_vestel", "current_l3_a"),
        # 230 V = 0x00E6 (evcc divider 1)
        Read("voltage_l1", 1014, "input", (0x00E6,), 230, "evcc_vestel", "voltage_l1_v"),
        # 231 V = 0x00E7
        Read("voltage_l2", 1016, "input", (0x00E7,), 231, "evcc_vestel", "voltage_l2_v"),
        # 229 V = 0x00E5
        Read("voltage_l3", 1018, "input", (0x00E5,), 229, "evcc_vestel", "voltage_l3_v"),
        # 11040 W = 0x00002B20
        Read("active_power", 1020, "input", (0x0000, 0x2B20), 11040, "evcc_vestel", "power_w"),
        # 12345 × 0.1 kWh = 0x00003039 -> 1234.5 kWh = 1234500 Wh (evcc / 10 -> kWh; nymea "1/10 kWh")
        Read("total_energy", 1036, "input", (0x0000, 0x3039), 1234500, "evcc_vestel, nymea_vestel", "energy_total_wh"),
        # 123456 Wh = 0x0001E240 (evcc ChargedEnergy / 1e3 -> kWh)
        Read(
            "session_energy", 1502, "input", (0x0001, 0xE240), 123456, "evcc_vestel, nymea_vestel", "session_energy_wh"
        ),
        # 16 A = 0x0010 in holding 5004 (evcc GetMaxCurrent reads it with FC03)
        Read("charging_current", 5004, "holding", (0x0010,), 16, "evcc_vestel", "current_limit_a"),
        # "VESTEL" in UTF-16BE: one character per register (evcc utf16BEBytesAsString), 10 registers
        Read(
            "brand",
            190,
            "input",
            (0x0056, 0x0045, 0x0053, 0x0054, 0x0045, 0x004C, 0x0000, 0x0000, 0x0000, 0x0000),
            "VESTEL",
            "evcc_vestel (UTF-16BE strings)",
        ),
        # cable and vehicle connected, locked (evcc: >= 2 -> connected)
        Read("cable_state", 1004, "input", (0x0003,), 3, "evcc_vestel, nymea_vestel"),
        # charging (evcc: == 1 -> C)
        Read("charging_state", 1001, "input", (0x0001,), 1, "evcc_vestel, nymea_vestel"),
        # nymea: 2 = Charging
        Read("chargepoint_state", 1000, "input", (0x0002,), 2, "nymea_vestel", "vendor_status"),
    ),
    statuses=(
        Status(
            {"cable_state": (0x0000,), "charging_state": (0x0000,), "chargepoint_state": (0x0000,)},
            "A",
            "evcc_vestel: cable 0 < 2 -> A (nymea 0 = Available)",
        ),
        Status(
            {"cable_state": (0x0001,), "charging_state": (0x0000,), "chargepoint_state": (0x0000,)},
            "A",
            "evcc_vestel: cable 1 (no vehicle) < 2 -> A",
        ),
        Status(
            {"cable_state": (0x0002,), "charging_state": (0x0000,), "chargepoint_state": (0x0001,)},
            "B",
            "evcc_vestel: cable 2 -> B, not charging (nymea 1 = Preparing)",
        ),
        Status(
            {"cable_state": (0x0003,), "charging_state": (0x0000,), "chargepoint_state": (0x0004,)},
            "B",
            "evcc_vestel: cable 3 -> B, not charging (nymea 4 = SuspendedEV)",
        ),
        Status(
            {"cable_state": (0x0003,), "charging_state": (0x0001,), "chargepoint_state": (0x0002,)},
            "C",
            "evcc_vestel: cable 3 and charging 1 -> C (nymea 2 = Charging)",
        ),
    ),
    writes=(
        # evcc MaxCurrent: WriteSingleRegister(5004, 10) -> 0x000A
        Write("limit 10 A", "charging_current", 5004, 10, (0x000A,), (6,), "evcc_vestel"),
        # evcc Enable(false): WriteSingleRegister(5004, 0)
        Write("pause", "charging_current", 5004, 0, (0x0000,), (6,), "evcc_vestel"),
        # nymea_vestel: 2000 failsafe current in A, 2002 failsafe timeout in s (holding UINT16)
        Write("failsafe 10 A", "failsafe_current", 2000, 10, (0x000A,), (6, 16), "nymea_vestel"),
        Write("failsafe timeout 30 s", "failsafe_timeout", 2002, 30, (0x001E,), (6, 16), "nymea_vestel"),
    ),
    live_iec61851_state="C",
)
