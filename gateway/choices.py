"""Enumerations shared by models, profiles, the poller and the dashboard."""

from django.db import models


class Function(models.TextChoices):
    """Modbus object type (and so the read function code)."""

    COIL = "coil", "Coil (FC01)"
    DISCRETE_INPUT = "discrete_input", "Discrete input (FC02)"
    HOLDING = "holding", "Holding register (FC03)"
    INPUT = "input", "Input register (FC04)"


class DataType(models.TextChoices):
    """How the raw registers of one value are encoded."""

    BOOL = "bool", "bool (coil / discrete input)"
    BIT = "bit", "bit within a register"
    INT16 = "int16", "int16"
    UINT16 = "uint16", "uint16"
    INT32 = "int32", "int32"
    UINT32 = "uint32", "uint32"
    INT64 = "int64", "int64"
    UINT64 = "uint64", "uint64"
    FLOAT32 = "float32", "float32"
    FLOAT64 = "float64", "float64"
    STRING = "string", "string of N registers"
    BYTES = "bytes", "raw bytes of N registers"


class ByteOrder(models.TextChoices):
    """Byte and word order of a multi-byte value, named after the bytes A (most significant) .. D."""

    ABCD = "ABCD", "ABCD (big endian, high word first)"
    BADC = "BADC", "BADC (bytes swapped, high word first)"
    CDAB = "CDAB", "CDAB (low word first)"
    DCBA = "DCBA", "DCBA (little endian)"


class Access(models.TextChoices):
    READ = "r", "read"
    READ_WRITE = "rw", "read-write"
    WRITE = "w", "write-only (never read)"


class StringEncoding(models.TextChoices):
    """How the bytes of a string register decode to text."""

    ASCII = "ascii", "ASCII, 2 characters per register"
    UTF8 = "utf-8", "UTF-8"
    UTF16BE = "utf-16-be", "UTF-16BE, 1 character per register"


class PollGroup(models.TextChoices):
    FAST = "fast", "fast (every poll)"
    SLOW = "slow", "slow (identity / configuration)"


class Iec61851State(models.TextChoices):
    """Control-pilot states of IEC 61851-1."""

    A = "A", "A: no vehicle"
    B = "B", "B: vehicle connected, not charging"
    C = "C", "C: charging"
    D = "D", "D: charging, ventilation required"
    E = "E", "E: no power (short circuit / error)"
    F = "F", "F: charger fault"


class StatusMatch(models.TextChoices):
    """How a status rule compares its register's decoded value with its code."""

    IS = "is", "is the code"
    IS_NOT = "is_not", "is any value but the code (e.g. an error code other than 0)"


class OperatorStatus(models.TextChoices):
    """One status an operator reads at a glance, whatever the vendor."""

    AVAILABLE = "available", "Available"
    PREPARING = "preparing", "Occupied / preparing"
    CHARGING = "charging", "Charging"
    SUSPENDED = "suspended", "Suspended"
    FINISHING = "finishing", "Finishing"
    FAULTED = "faulted", "Faulted"
    UNAVAILABLE = "unavailable", "Unavailable"
    OFFLINE = "offline", "Offline"


class Role(models.TextChoices):
    """Where a register's value goes in the vendor-neutral telemetry record."""

    NONE = "", "(not in telemetry)"
    VENDOR_STATUS = "vendor_status", "vendor status code (mapped through the status table)"
    IEC61851_STATE = "iec61851_state", "IEC 61851 state code"
    POWER_W = "power_w", "active power, W"
    CURRENT_L1_A = "current_l1_a", "current L1, A"
    CURRENT_L2_A = "current_l2_a", "current L2, A"
    CURRENT_L3_A = "current_l3_a", "current L3, A"
    VOLTAGE_L1_V = "voltage_l1_v", "voltage L1-N, V"
    VOLTAGE_L2_V = "voltage_l2_v", "voltage L2-N, V"
    VOLTAGE_L3_V = "voltage_l3_v", "voltage L3-N, V"
    ENERGY_TOTAL_WH = "energy_total_wh", "energy meter total, Wh"
    SESSION_ENERGY_WH = "session_energy_wh", "session energy, Wh"
    TEMPERATURE_C = "temperature_c", "temperature, °C"
    CURRENT_LIMIT_A = "current_limit_a", "current limit in force (read back), A"
    ERROR_CODE = "error_code", "error code"


# The numeric values of the telemetry record, in display order.
TELEMETRY_VALUE_ROLES: tuple[str, ...] = tuple(
    role.value for role in Role if role not in (Role.NONE, Role.VENDOR_STATUS, Role.IEC61851_STATE)
)
# Values a profile may declare as derived from others (see profiles/decode.py).
DERIVABLE_ROLES: tuple[str, ...] = (Role.POWER_W.value,)


class CommandAction(models.TextChoices):
    """What an operator can ask of a charge point (a profile declares how each is done, or that it is not)."""

    SET_CURRENT_LIMIT = "set_current_limit", "Set current limit"
    PAUSE = "pause", "Pause charging"
    RESUME = "resume", "Resume charging"
    # Site load management: what the charger falls back to by itself when its watchdog lapses.
    SET_FAILSAFE_CURRENT = "set_failsafe_current", "Set failsafe current"
    SET_FAILSAFE_TIMEOUT = "set_failsafe_timeout", "Set failsafe timeout"


# The actions an operator's buttons send; the failsafe ones are site load management's set-up.
OPERATOR_ACTIONS: tuple[str, ...] = (CommandAction.SET_CURRENT_LIMIT, CommandAction.PAUSE, CommandAction.RESUME)
# Actions that carry a value, and its unit.
VALUE_UNITS: dict[str, str] = {
    CommandAction.SET_CURRENT_LIMIT: "A",
    CommandAction.SET_FAILSAFE_CURRENT: "A",
    CommandAction.SET_FAILSAFE_TIMEOUT: "s",
}


class Wiring(models.TextChoices):
    """Which of the site's phases a charger is connected to (its L1 first)."""

    THREE_PHASE = "L123", "three-phase (L1, L2, L3)"
    L1 = "L1", "single-phase on L1"
    L2 = "L2", "single-phase on L2"
    L3 = "L3", "single-phase on L3"


class CommandStatus(models.TextChoices):
    """Where a command stands: pending until the poller's result (or the expiry) arrives."""

    PENDING = "pending", "Pending"
    APPLIED = "applied", "Applied"
    FAILED = "failed", "Failed"


class FailureReason(models.TextChoices):
    """Why a command failed (the result's reason_code; its reason says the details)."""

    NOT_PERMITTED = "not_permitted", "not permitted"
    OUT_OF_RANGE = "out_of_range", "out of range"
    UNSUPPORTED = "unsupported", "unsupported by the charger"
    EXPIRED = "expired", "expired"
    OFFLINE = "offline", "charge point offline"
    TIMEOUT = "timeout", "timeout"
    MODBUS_EXCEPTION = "modbus_exception", "Modbus exception"
    READBACK_MISMATCH = "readback_mismatch", "read-back mismatch"
    INTERRUPTED = "interrupted", "interrupted by a poller restart"
    NO_ANSWER = "no_answer", "no poller answered"
    INVALID = "invalid", "invalid command"


class AlertKind(models.TextChoices):
    """What an alert rule watches: the built-in kinds, or a threshold on one telemetry value."""

    FAULTED = "faulted", "Charger faulted"
    OFFLINE = "offline", "Charge point offline"
    STALE = "stale", "Telemetry stale (the poller stopped)"
    TEMPERATURE = "temperature", "Temperature high"
    COMMAND_FAILED = "command_failed", "Command failed"
    THRESHOLD = "threshold", "Threshold on a value"
    SITE_METER_STALE = "site_meter_stale", "Site meter stale (load management on its fallback)"
    SITE_OVER_LIMIT = "site_over_limit", "Site over its connection limit"
    SITE_CONTROL_REFUSED = "site_control_refused", "Site load management refused"


class DeliveryChannel(models.TextChoices):
    """Where an alert event is delivered: the alerts topic, e-mail, a webhook."""

    KAFKA = "kafka", "Alerts topic"
    EMAIL = "email", "E-mail"
    WEBHOOK = "webhook", "Webhook"


class DeliveryStatus(models.TextChoices):
    """An owed delivery is pending until delivered (done) or given up after its attempts."""

    PENDING = "pending", "Pending"
    DONE = "done", "Delivered"
    GIVEN_UP = "given_up", "Given up"


class AlertSeverity(models.TextChoices):
    INFO = "info", "Info"
    WARNING = "warning", "Warning"
    CRITICAL = "critical", "Critical"


class Comparator(models.TextChoices):
    GT = ">", "above"
    GE = ">=", "at or above"
    LT = "<", "below"
    LE = "<=", "at or below"
