"""Webasto NEXT: golden reads, status and writes.

Values come from:
- webasto_doc: Webasto "Modbus Specification Webasto NEXT" rev 3.00 (tomwellnitz/Webasto-Next-Modbus
  docs/... @ 6b7b861e, via the reference JSON): all holding registers, unit id 255; currents UINT16
  mA at 1008/1010/1012; power UINT32 W at 1020; meter UINT32 Wh at 1036; error code 1006
  (0 = none, 1..16 per Appendix 1); 5004 charge current UINT16 A.
- evcc_webasto: evcc-io/evcc charger/webasto-next.go (reference commit b29b49e3; read at stored
  commit 005a1866): BigEndian.Uint16 currents / 1e3, BigEndian.Uint32 power (W) and energy / 1e3
  (Wh -> kWh); status 1000: 0 -> A, 1/4 -> B, 3 -> C, 7 -> "charging error"; MaxCurrent and
  Enable write 5004 as one register with WriteMultipleRegisters (FC16), 0 to disable.
Words: big-endian, worked out with struct.pack(">H"/">I") in a scratch shell.
"""

from tests.golden import EVCC_REFERENCE_COMMIT, GoldenTable, Read, Status, Write

SOURCES = {
    "webasto_doc": "tomwellnitz/Webasto-Next-Modbus docs/Webasto_NEXT_Modbus_Register_1-00_external_V3.pdf"
    " @ 6b7b861e37b4d4a29fd74e2ce71bcdfeeb5ba749 (spec rev 3.00)",
    "evcc_webasto": f"evcc-io/evcc charger/webasto-next.go @ {EVCC_REFERENCE_COMMIT}"
    " (read at 005a1866b99773f648f281bd5f4c7fc134cc72c5)",
    "reference": "../shared/reference/charger_register_maps.json chargers[webasto-next]",
}

TABLE = GoldenTable(
    slug="webasto-next",
    unit_id=255,  # webasto_doc: port 502, unit id 255
    sources=SOURCES,
    reads=(
        # 16000 mA = 0x3E80 -> 16 A (evcc / 1e3)
        Read("current_l1", 1008, "holding", (0x3E80,), 16.0, "webasto_doc, evcc_webasto", "current_l1_a"),
        # 15500 mA = 0x3C8C
        Read("current_l2", 1010, "holding", (0x3C8C,), 15.5, "webasto_doc, evcc_webasto", "current_l2_a"),
        # 6000 mA = 0x1770
        Read("current_l3", 1012, "holding", (0x1770,), 6.0, "webasto_doc, evcc_webasto", "current_l3_a"),
        # 11040 W = 0x00002B20
        Read("active_power", 1020, "holding", (0x0000, 0x2B20), 11040, "webasto_doc, evcc_webasto", "power_w"),
        # 1234567 Wh = 0x0012D687 (evcc / 1e3 -> kWh)
        Read(
            "energy_meter", 1036, "holding", (0x0012, 0xD687), 1234567, "webasto_doc, evcc_webasto", "energy_total_wh"
        ),
        # error code 3 = PB09 control pilot error (webasto_doc Appendix 1)
        Read("evse_error_code", 1006, "holding", (0x0003,), 3, "webasto_doc Appendix 1", "error_code", live=False),
        # 0 = no error; served end to end
        Read("evse_error_code", 1006, "holding", (0x0000,), 0, "webasto_doc", "error_code"),
        # EVSE state 1 = running (webasto_doc: 0 starting, 1 running, 2 error)
        Read("evse_state", 1002, "holding", (0x0001,), 1, "webasto_doc"),
        # charge point state 3 = charging
        Read("charge_point_state", 1000, "holding", (0x0003,), 3, "webasto_doc, evcc_webasto", "vendor_status"),
    ),
    statuses=(
        Status({"charge_point_state": (0x0000,)}, "A", "evcc_webasto: 0 -> A"),
        Status({"charge_point_state": (0x0001,)}, "B", "evcc_webasto: 1 -> B"),
        Status({"charge_point_state": (0x0003,)}, "C", "evcc_webasto: 3 -> C"),
        Status({"charge_point_state": (0x0004,)}, "B", "evcc_webasto: 4 -> B"),
        Status({"charge_point_state": (0x0007,)}, "F", "evcc_webasto: 7 -> 'charging error'", faulted=True),
    ),
    writes=(
        # 10 A = 0x000A; evcc writes 5004 with FC16 (one register), the product with FC06 (both take one word)
        Write("limit 10 A", "set_charge_current", 5004, 10, (0x000A,), (6, 16), "webasto_doc, evcc_webasto"),
        # evcc Enable(false): 0 to 5004
        Write("pause", "set_charge_current", 5004, 0, (0x0000,), (6, 16), "webasto_doc, evcc_webasto"),
        # webasto_doc: 2000 safeCurrent in A, 2002 comTimeout in s (one UINT16 each)
        Write("failsafe 10 A", "safe_current", 2000, 10, (0x000A,), (6, 16), "webasto_doc"),
        Write("failsafe timeout 30 s", "com_timeout", 2002, 30, (0x001E,), (6, 16), "webasto_doc"),
    ),
    live_iec61851_state="C",
    notes=(
        "evcc reads the currents with FC04; webasto_doc (and nymea, the HA integration) say holding (used here).",
        "evcc writes 5004 with FC16; webasto_doc does not restrict it; evcc writes 6000 with FC06, so both are"
        " accepted here.",
    ),
)
