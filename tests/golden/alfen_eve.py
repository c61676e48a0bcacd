"""Alfen Eve (NG9xx): golden reads, status and writes.

Values come from:
- alfen_doc: Alfen "Implementation of Modbus Slave TCP/IP for Alfen NG9xx platform" v2.3, as
  transcribed in rhernaus/victron-alfen-charger @ b3e871c2 (via the reference JSON): holding
  registers only, big-endian bytes and words, NaN = unavailable, socket registers on unit 1,
  station registers on unit 200, 1210 written as one FC16 of both registers.
- evcc_alfen: evcc-io/evcc charger/alfen.go (reference commit b29b49e3; read here at stored commit
  0316f24a): float32 via rs485.RTUIeee754ToFloat64 (binary.BigEndian), energy float64
  binary.BigEndian / 1e3 (Wh -> kWh), NaN phase values -> 0, setCurrent = BigEndian float32 bits
  written with WriteMultipleRegisters(1210, 2), 0 A to disable.
- evcc_api: evcc api ChargeStatusString + StatusEasA: "A"->A, "B*"->B, "C1"/"D1"->B, other "C*"/"D*"->C,
  "E"->A, "F"->error.
Words: IEEE-754 float32/float64 big-endian, worked out with struct.pack(">f"/">d") in a scratch shell.
"""

from tests.golden import EVCC_REFERENCE_COMMIT, GoldenTable, Read, Status, Write

SOURCES = {
    "alfen_doc": "rhernaus/victron-alfen-charger reference/Implementation_of_Modbus_Slave_TCPIP_"
    "for_Alfen_NG9xx_platform.md"
    " @ b3e871c2e43793db525d2078aea7b92baa69c53e (Alfen doc v2.3)",
    "evcc_alfen": f"evcc-io/evcc charger/alfen.go @ {EVCC_REFERENCE_COMMIT}"
    " (read at 0316f24abba2075c8ff85d4d8f5dbbf2b66dbaf1)",
    "evcc_api": f"evcc-io/evcc api/chargemodestatus.go @ {EVCC_REFERENCE_COMMIT} (ChargeStatusString, StatusEasA)",
    "reference": "../shared/reference/charger_register_maps.json chargers[alfen-eve]",
}

OPERATIVE = (0x0001,)  # 1200 availability: 1 = operative (alfen_doc)

TABLE = GoldenTable(
    slug="alfen-eve",
    unit_id=1,  # reference unit_id.socket_1 (alfen_doc): socket registers answer on unit 1
    sources=SOURCES,
    reads=(
        # float32 big-endian: 230.5 = 0x43668000 (struct.pack(">f", 230.5)); alfen_doc 306 V L1-N
        Read("voltage_l1_n", 306, "holding", (0x4366, 0x8000), 230.5, "alfen_doc, evcc_alfen", "voltage_l1_v"),
        # 231.25 = 0x43674000
        Read("voltage_l2_n", 308, "holding", (0x4367, 0x4000), 231.25, "alfen_doc, evcc_alfen", "voltage_l2_v"),
        # 229.75 = 0x4365C000
        Read("voltage_l3_n", 310, "holding", (0x4365, 0xC000), 229.75, "alfen_doc, evcc_alfen", "voltage_l3_v"),
        # 16.0 A = 0x41800000
        Read("current_l1", 320, "holding", (0x4180, 0x0000), 16.0, "alfen_doc, evcc_alfen", "current_l1_a"),
        # 15.5 A = 0x41780000
        Read("current_l2", 322, "holding", (0x4178, 0x0000), 15.5, "alfen_doc, evcc_alfen", "current_l2_a"),
        # quiet NaN 0x7FC00000: alfen_doc "unavailable registers read as NaN"; evcc replaces it (we say None)
        Read("current_l3", 324, "holding", (0x7FC0, 0x0000), None, "alfen_doc (NaN = unavailable)", "current_l3_a"),
        # 11040.0 W = 0x462C8000; evcc CurrentPower reads 344
        Read("active_power", 344, "holding", (0x462C, 0x8000), 11040.0, "alfen_doc, evcc_alfen", "power_w"),
        # float64 123456.5 Wh = 0x40FE240800000000; evcc EnergyImport = float64 BigEndian / 1e3
        Read(
            "energy_delivered_total",
            374,
            "holding",
            (0x40FE, 0x2408, 0x0000, 0x0000),
            123456.5,
            "alfen_doc, evcc_alfen",
            "energy_total_wh",
        ),
        # 16.0 A applied max current = 0x41800000
        Read("actual_applied_max_current", 1206, "holding", (0x4180, 0x0000), 16.0, "alfen_doc", "current_limit_a"),
        # station register on unit 200: board temperature 41.5 °C = 0x42260000
        Read("temperature", 1102, "holding", (0x4226, 0x0000), 41.5, "alfen_doc (unit 200)", "temperature_c", 200),
        # alfen_doc example "Alfen NV": ASCII, 2 chars per register, high byte first, NUL-padded (5 registers)
        Read(
            "station_manufacturer",
            117,
            "holding",
            (0x416C, 0x6665, 0x6E20, 0x4E56, 0x0000),
            "Alfen NV",
            "alfen_doc (unit 200, example 'Alfen NV')",
            unit_id=200,
        ),
        # alfen_doc: 1200 availability 1 = operative
        Read("availability", 1200, "holding", OPERATIVE, 1, "alfen_doc"),
        # Mode 3 state "C2" as ASCII in 5 registers: 'C'=0x43, '2'=0x32, then NUL
        Read(
            "mode3_state",
            1201,
            "holding",
            (0x4332, 0x0000, 0x0000, 0x0000, 0x0000),
            "C2",
            "alfen_doc (1201, 5 registers ASCII)",
            "vendor_status",
        ),
    ),
    statuses=(
        # evcc_api: ChargeStatusStringWithMapping(s, StatusEasA) on the 1201 string
        Status({"availability": OPERATIVE, "mode3_state": (0x4100, 0, 0, 0, 0)}, "A", "evcc_api: 'A' -> A"),
        Status({"availability": OPERATIVE, "mode3_state": (0x4231, 0, 0, 0, 0)}, "B", "evcc_api: 'B1' -> B"),
        Status({"availability": OPERATIVE, "mode3_state": (0x4232, 0, 0, 0, 0)}, "B", "evcc_api: 'B2' -> B"),
        Status({"availability": OPERATIVE, "mode3_state": (0x4331, 0, 0, 0, 0)}, "B", "evcc_api: 'C1' -> B"),
        Status({"availability": OPERATIVE, "mode3_state": (0x4431, 0, 0, 0, 0)}, "B", "evcc_api: 'D1' -> B"),
        Status({"availability": OPERATIVE, "mode3_state": (0x4332, 0, 0, 0, 0)}, "C", "evcc_api: 'C2' -> C"),
        Status({"availability": OPERATIVE, "mode3_state": (0x4432, 0, 0, 0, 0)}, "C", "evcc_api: 'D2' -> C"),
        Status(
            {"availability": OPERATIVE, "mode3_state": (0x4500, 0, 0, 0, 0)}, "A", "evcc_api: 'E' -> A (StatusEasA)"
        ),
        Status(
            {"availability": OPERATIVE, "mode3_state": (0x4600, 0, 0, 0, 0)},
            "F",
            "evcc_api: 'F' -> error; alfen_doc: F = -12 V, error state",
            faulted=True,
        ),
    ),
    writes=(
        # evcc setCurrent: BigEndian float32 bits of 10.0 = 0x41200000, WriteMultipleRegisters(1210, 2)
        Write("limit 10 A", "max_current_setpoint", 1210, 10, (0x4120, 0x0000), (16,), "alfen_doc, evcc_alfen"),
        # evcc Enable(false) writes 0.0 A = 0x00000000 to 1210 (FC16, both registers in one request)
        Write("pause", "max_current_setpoint", 1210, 0, (0x0000, 0x0000), (16,), "alfen_doc, evcc_alfen"),
    ),
    live_iec61851_state="C",  # "C2" -> C (evcc_api)
    notes=(
        "taphome 'alfen-box' claims low word first for 32-bit values; alfen_doc and evcc say big-endian (used here).",
    ),
)
