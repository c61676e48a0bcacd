"""Schneider EVlink Pro AC: golden reads, status and writes.

Values come from:
- evcc_schneider: evcc-io/evcc charger/schneider-v3.go (reference commit b29b49e3; read at stored
  commit 0316f24a): holding registers (FC03), unit id 255; currents 2999.. and voltages 3027.. as
  float32 with encoding.Float32LswFirst; power 3059 Float32LswFirst kW * 1e3; energy 3203
  encoding.Uint64LswFirst Wh / 1e3; status ev_state 1: 0/1/2/6 -> A, 3/4/5/7 -> B, 8/9 -> C,
  anything else "invalid status"; set point 4004 written with WriteSingleRegister (FC06), 0 to
  disable.
- mbmd_encoding: volkszaehler/mbmd encoding/number.go @ 17575848: Uint32LswFirst(b) =
  b[2]<<24 | b[3]<<16 | b[0]<<8 | b[1] (low word first, bytes big-endian within a word);
  Uint64LswFirst(b) = b[6]b[7] b[4]b[5] b[2]b[3] b[0]b[1].
Words: the float32 big-endian words from struct.pack(">f") in a scratch shell, then written low word
first; the uint64 from struct.pack(">Q"), words reversed.
"""

from tests.golden import EVCC_REFERENCE_COMMIT, GoldenTable, Read, Status, Write

SOURCES = {
    "evcc_schneider": f"evcc-io/evcc charger/schneider-v3.go @ {EVCC_REFERENCE_COMMIT}"
    " (read at 0316f24abba2075c8ff85d4d8f5dbbf2b66dbaf1)",
    "gekko_schneider": "https://devicedb.my-gekko.com/profile_list.php?id_dv=150&id_pr=1 (via the reference JSON)",
    "starkest_schneider": "https://star.ke.st/library/schneider-evlink-pro-ac-ev-charger (via the reference JSON)",
    "mbmd_encoding": "volkszaehler/mbmd encoding/number.go @ 1757584874f65c0db64c03769cfc27ffd844adf8",
    "reference": "../shared/reference/charger_register_maps.json chargers[schneider-evlink-pro-ac]",
}


def ev_state(code: int) -> dict[str, tuple[int, ...]]:
    return {"ev_state": (code,)}


TABLE = GoldenTable(
    slug="schneider-evlink-pro-ac",
    unit_id=255,  # evcc_schneider default ID 255
    sources=SOURCES,
    reads=(
        # 16.0 A = 0x41800000 -> low word first: 0x0000 0x4180
        Read("current_l1", 2999, "holding", (0x0000, 0x4180), 16.0, "evcc_schneider, mbmd_encoding", "current_l1_a"),
        # 15.5 A = 0x41780000 -> 0x0000 0x4178
        Read("current_l2", 3001, "holding", (0x0000, 0x4178), 15.5, "evcc_schneider, mbmd_encoding", "current_l2_a"),
        # 0.25 A = 0x3E800000 -> 0x0000 0x3E80
        Read("current_l3", 3003, "holding", (0x0000, 0x3E80), 0.25, "evcc_schneider, mbmd_encoding", "current_l3_a"),
        # 230.5 V = 0x43668000 -> 0x8000 0x4366
        Read("voltage_l1", 3027, "holding", (0x8000, 0x4366), 230.5, "evcc_schneider, mbmd_encoding", "voltage_l1_v"),
        # 231.25 V = 0x43674000 -> 0x4000 0x4367
        Read("voltage_l2", 3029, "holding", (0x4000, 0x4367), 231.25, "evcc_schneider, mbmd_encoding", "voltage_l2_v"),
        # 229.75 V = 0x4365C000 -> 0xC000 0x4365
        Read("voltage_l3", 3031, "holding", (0xC000, 0x4365), 229.75, "evcc_schneider, mbmd_encoding", "voltage_l3_v"),
        # 7.25 kW = 0x40E80000 -> 0x0000 0x40E8; evcc CurrentPower = kW * 1e3 = 7250 W
        Read("active_power", 3059, "holding", (0x0000, 0x40E8), 7250.0, "evcc_schneider (kW * 1e3)", "power_w"),
        # 1234567 Wh = 0x000000000012D687 -> low word first: 0xD687 0x0012 0x0000 0x0000 (evcc / 1e3 -> kWh)
        Read(
            "total_energy",
            3203,
            "holding",
            (0xD687, 0x0012, 0x0000, 0x0000),
            1234567,
            "evcc_schneider, mbmd_encoding (Uint64LswFirst)",
            "energy_total_wh",
        ),
        # set point 16 A = 0x0010 (evcc reads 4004 with FC03 at start)
        Read("set_point", 4004, "holding", (0x0010,), 16, "evcc_schneider", "current_limit_a"),
        # ev_state 8 = charging EV
        Read("ev_state", 1, "holding", (0x0008,), 8, "evcc_schneider", "vendor_status"),
        # OCPP status 3 = charging (gekko enum, via the reference JSON; evcc reads 150 in Diagnose)
        Read("ocpp_status", 150, "holding", (0x0003,), 3, "gekko_schneider (reference), evcc_schneider"),
    ),
    statuses=(
        Status(ev_state(0), "A", "evcc_schneider: 0 -> A"),
        Status(ev_state(1), "A", "evcc_schneider: 1 -> A"),
        Status(ev_state(2), "A", "evcc_schneider: 2 -> A"),
        Status(ev_state(6), "A", "evcc_schneider: 6 -> A"),
        Status(ev_state(3), "B", "evcc_schneider: 3 -> B"),
        Status(ev_state(4), "B", "evcc_schneider: 4 -> B"),
        Status(ev_state(5), "B", "evcc_schneider: 5 -> B"),
        Status(ev_state(7), "B", "evcc_schneider: 7 -> B"),
        Status(ev_state(8), "C", "evcc_schneider: 8 -> C"),
        Status(ev_state(9), "C", "evcc_schneider: 9 -> C"),
        Status(ev_state(10), "F", "evcc_schneider: 10 -> invalid status (gekko: CP state invalid)", faulted=True),
        Status(ev_state(11), "F", "evcc_schneider: 11 -> invalid status (gekko: CP symmetric fault)", faulted=True),
    ),
    writes=(
        # evcc MaxCurrent: WriteSingleRegister(4004, 10) -> 0x000A
        Write("limit 10 A", "set_point", 4004, 10, (0x000A,), (6,), "evcc_schneider"),
        # evcc Enable(false): WriteSingleRegister(4004, schneiderDisabled = 0)
        Write("pause", "set_point", 4004, 0, (0x0000,), (6,), "evcc_schneider"),
        # starkest_schneider (AI summary, unverified): 4006 degraded set point (three-phase) in A
        Write("failsafe 10 A", "degraded_set_point_tri", 4006, 10, (0x000A,), (6, 16), "starkest_schneider"),
    ),
    live_iec61851_state="C",
    notes=(
        "star.ke.st (AI summary) lists 32-bit values big-endian; evcc (in production) reads them low word first"
        " (used here).",
        "gekko reads telemetry with FC04, evcc with FC03 (used here).",
    ),
)
