"""ABB Terra AC: golden reads, status and writes.

Values come from:
- abb_doc: ABB "Terra AC wallbox - TAC Modbus Communication" rev 1.11 (JernejHren/ABB-Terra-AC
  ABB_Manuals/... @ 2610e6b2, via the reference JSON): holding registers, "most significant byte
  first" (big-endian bytes and words), currents in 0.001 A, voltages in 0.1 V, power W, session
  energy Wh; firmware bytes example "0x01 0x02 0x13 0x00 = v1.2.13"; charging state in the high
  byte of 400Dh, bits 0-6; 4100h current limit in mA, < 6 A pauses.
- evcc_abb: evcc-io/evcc charger/abb.go (reference commit b29b49e3; read at stored commit 02a66252):
  binary.BigEndian.Uint32 everywhere; currents / 1e3, voltages / 10; status = b[2] & 0x7f of the
  two registers at 0x400C (b[2] = high byte of 400Dh); 0 -> A, 1/2/3 -> B, 4 -> C, 5 -> B if socket
  lock (0x400A, uint32 BE) >= 0x0101 else A; setCurrent = BigEndian uint32 mA with
  WriteMultipleRegisters(0x4100, 2); Enable(false) writes 0.
Words: big-endian uint32, worked out with struct.pack(">I") in a scratch shell.
"""

from tests.golden import EVCC_REFERENCE_COMMIT, GoldenTable, Read, Status, Write

SOURCES = {
    "abb_doc": "JernejHren/ABB-Terra-AC ABB_Manuals/ABB_Terra_AC_Charger_ModbusCommunication_v1.11.pdf"
    " @ 2610e6b275f9d694d142f76f0580af0b7f7d7cc2",
    "evcc_abb": f"evcc-io/evcc charger/abb.go @ {EVCC_REFERENCE_COMMIT}"
    " (read at 02a66252ca7112f033fd5524de9059ddf3e8b213)",
    "abb_ha": "JernejHren/ABB-Terra-AC custom_components/abb_terra_ac/__init__.py (read at 1312801b)",
    "reference": "../shared/reference/charger_register_maps.json chargers[abb-terra-ac]",
}

NO_CABLE = (0x0000, 0x0000)  # socket lock state 0x0000 (abb_doc)


def state(code: int, below_command: bool = False) -> tuple[int, int]:
    """400Ch-400Dh words for a charging state: the code sits in the high byte of 400Dh (abb_doc)."""
    return (0x0000, (0x80 if below_command else 0) << 8 | code << 8)


TABLE = GoldenTable(
    slug="abb-terra-ac",
    unit_id=1,  # reference: evcc, the ABB SDK and the HA integration default to unit 1
    sources=SOURCES,
    reads=(
        # 16.000 A = 16000 mA = 0x00003E80 (abb_doc 0.001 A; evcc / 1e3)
        Read("current_l1", 0x4010, "holding", (0x0000, 0x3E80), 16.0, "abb_doc, evcc_abb", "current_l1_a"),
        # 15.5 A = 15500 mA = 0x00003C8C
        Read("current_l2", 0x4012, "holding", (0x0000, 0x3C8C), 15.5, "abb_doc, evcc_abb", "current_l2_a"),
        # 70.0 A = 70000 mA = 0x00011170: a high word that must count (word order)
        Read("current_l3", 0x4014, "holding", (0x0001, 0x1170), 70.0, "abb_doc, evcc_abb", "current_l3_a"),
        # 230.5 V = 2305 × 0.1 V = 0x00000901 (evcc / 10)
        Read("voltage_l1", 0x4016, "holding", (0x0000, 0x0901), 230.5, "abb_doc, evcc_abb", "voltage_l1_v"),
        # 231.0 V = 2310 = 0x00000906
        Read("voltage_l2", 0x4018, "holding", (0x0000, 0x0906), 231.0, "abb_doc, evcc_abb", "voltage_l2_v"),
        # 229.8 V = 2298 = 0x000008FA
        Read("voltage_l3", 0x401A, "holding", (0x0000, 0x08FA), 229.8, "abb_doc, evcc_abb", "voltage_l3_v"),
        # 11040 W = 0x00002B20 (abb_doc 1 W; evcc CurrentPower)
        Read("active_power", 0x401C, "holding", (0x0000, 0x2B20), 11040, "abb_doc, evcc_abb", "power_w"),
        # 123456 Wh = 0x0001E240 (abb_doc 1 Wh; evcc ChargedEnergy / 1e3 -> kWh)
        Read("session_energy", 0x401E, "holding", (0x0001, 0xE240), 123456, "abb_doc, evcc_abb", "session_energy_wh"),
        # charging current limit 16 A = 16000 mA = 0x00003E80 (abb_doc 400Eh, 0.001 A)
        Read(
            "charging_current_limit", 0x400E, "holding", (0x0000, 0x3E80), 16.0, "abb_doc, evcc_abb", "current_limit_a"
        ),
        # error code 0 = no error (abb_doc; evcc Diagnose prints BigEndian.Uint32)
        Read("error_code", 0x4008, "holding", (0x0000, 0x0000), 0, "abb_doc, evcc_abb", "error_code"),
        # charging state 4 (C2, charging) with bit 7 set (below the 4100h command): evcc b[2] & 0x7f = 4
        Read("charging_state", 0x400C, "holding", state(4, True), 4, "abb_doc, evcc_abb", "vendor_status"),
        # socket lock 0x0111: cable at station and EV, locked (abb_doc)
        Read("socket_lock_state", 0x400A, "holding", (0x0000, 0x0111), 0x0111, "abb_doc, evcc_abb"),
        # abb_doc example: bytes 0x01 0x02 0x13 0x00 = v1.2.13
        Read(
            "firmware_version",
            0x4004,
            "holding",
            (0x0102, 0x1300),
            bytes((0x01, 0x02, 0x13, 0x00)),
            "abb_doc (example v1.2.13)",
        ),
    ),
    statuses=(
        Status({"charging_state": state(0), "socket_lock_state": NO_CABLE}, "A", "evcc_abb: 0 (State A idle) -> A"),
        Status({"charging_state": state(1), "socket_lock_state": (0x0000, 0x0101)}, "B", "evcc_abb: 1 (B1) -> B"),
        Status({"charging_state": state(2), "socket_lock_state": (0x0000, 0x0111)}, "B", "evcc_abb: 2 (B2) -> B"),
        Status({"charging_state": state(3), "socket_lock_state": (0x0000, 0x0111)}, "B", "evcc_abb: 3 (C1) -> B"),
        Status({"charging_state": state(4), "socket_lock_state": (0x0000, 0x0111)}, "C", "evcc_abb: 4 (C2) -> C"),
        Status(
            {"charging_state": state(4, True), "socket_lock_state": (0x0000, 0x0111)},
            "C",
            "evcc_abb: b[2] & 0x7f drops bit 7 (abb_doc: charging below the commanded value) -> 4 -> C",
        ),
        Status(
            {"charging_state": state(5), "socket_lock_state": (0x0000, 0x0111)},
            "B",
            "evcc_abb: 5 and socket lock 0x0111 >= 0x0101 -> B",
        ),
        Status(
            {"charging_state": state(5), "socket_lock_state": (0x0000, 0x0001)},
            "A",
            "evcc_abb: 5 and socket lock 0x0001 < 0x0101 -> A",
        ),
    ),
    writes=(
        # evcc MaxCurrentMillis: uint32(10 * 1e3) = 10000 = 0x00002710, BigEndian, WriteMultipleRegisters(0x4100, 2)
        Write("limit 10 A", "set_charging_current_limit", 0x4100, 10, (0x0000, 0x2710), (16,), "abb_doc, evcc_abb"),
        # evcc Enable(false): setCurrent(0); abb_doc: below 6 A pauses the session
        Write("pause", "set_charging_current_limit", 0x4100, 0, (0x0000, 0x0000), (16,), "abb_doc, evcc_abb"),
        # abb_doc register table: 4109h fallback limit in A, 4106h communication timeout in s (UINT16 each)
        Write("failsafe 10 A", "set_fallback_limit", 0x4109, 10, (0x000A,), (6, 16), "abb_doc"),
        Write("failsafe timeout 30 s", "set_communication_timeout", 0x4106, 30, (0x001E,), (6, 16), "abb_doc"),
    ),
    live_iec61851_state="C",  # state 4 with bit 7 -> C (evcc_abb)
    notes=(
        "abb_ha reads error code 4008h as the FIRST register alone (a bitmask, e.g. 2 = residual current);"
        " evcc and the product read the two registers as one big-endian uint32, so that fault would read 131072."
        " Only 0 (no error) is in the table until a capture settles it.",
        "abb_ha masks the charging state byte with 0x0F, evcc with 0x7F (abb_doc: bits 0-6); both agree for 0-5.",
        "abb_sdk writes 4100h as [mA, 0]; abb_doc, evcc and abb_ha write [high word, low word] (used here).",
    ),
)
