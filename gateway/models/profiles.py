"""Device profiles: a charger model's register map and status rules, as data editable in the admin."""

from dataclasses import fields

from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models

from gateway.choices import (
    DERIVABLE_ROLES,
    Access,
    ByteOrder,
    DataType,
    Function,
    Iec61851State,
    OperatorStatus,
    PollGroup,
    Role,
    StringEncoding,
)
from gateway.profiles.codec import register_count
from gateway.profiles.spec import RegisterSpec
from gateway.profiles.validate import register_problems


class DeviceProfile(models.Model):
    """How to read one charger model: its registers, their encoding, its status rules, its quirks."""

    slug = models.SlugField(unique=True)
    name = models.CharField(max_length=200)
    vendor = models.CharField(max_length=100, blank=True)
    model = models.CharField(max_length=300, blank=True)
    source = models.TextField(blank=True, help_text="Where the register map comes from (cite it).")
    notes = models.TextField(blank=True, help_text="Quirks and disagreements between sources.")
    default_port = models.PositiveIntegerField(default=502, validators=[MaxValueValidator(65535)])
    default_unit_id = models.PositiveSmallIntegerField(default=1, validators=[MaxValueValidator(255)])
    max_gap = models.PositiveSmallIntegerField(
        default=8,
        validators=[MaxValueValidator(124)],
        help_text="Largest run of unused registers a single read may span (0: never read across gaps).",
    )
    max_read_registers = models.PositiveSmallIntegerField(
        default=125,
        validators=[MinValueValidator(1), MaxValueValidator(125)],
        help_text="Largest read this charger accepts (the protocol allows 125).",
    )
    fixed_read_size = models.PositiveSmallIntegerField(
        null=True,
        blank=True,
        validators=[MinValueValidator(1), MaxValueValidator(125)],
        help_text="Chargers that only accept reads of one exact size (KEBA: 2).",
    )
    read_blocks = models.JSONField(
        default=list,
        blank=True,
        help_text='Explicit reads, e.g. [{"function": "holding", "address": 300, "count": 46}].',
    )
    derived = models.JSONField(
        default=list, blank=True, help_text='Values computed from others, e.g. ["power_w"] (V × I).'
    )
    heartbeats = models.JSONField(
        default=list,
        blank=True,
        help_text='Watchdog writes, e.g. [{"register": "life_bit", "value": 1, "interval_s": 10}].',
    )
    simulator = models.JSONField(default=dict, blank=True, help_text="Hints for manage.py simulate.")

    class Meta:
        ordering = ["vendor", "name"]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        super().clean()
        errors: dict[str, str] = {}
        if not isinstance(self.derived, list) or set(self.derived) - set(DERIVABLE_ROLES):
            errors["derived"] = f"Only these values can be derived: {', '.join(DERIVABLE_ROLES)}."
        if not _is_list_of_dicts(self.read_blocks, ("function", "address", "count")):
            errors["read_blocks"] = "Each read block needs function, address and count."
        elif any(b["function"] not in Function.values for b in self.read_blocks):
            errors["read_blocks"] = f"Read block function must be one of {', '.join(Function.values)}."
        if not _is_list_of_dicts(self.heartbeats, ("register", "interval_s")):
            errors["heartbeats"] = "Each heartbeat needs register and interval_s."
        elif any(("value" in hb) == ("value_from" in hb) for hb in self.heartbeats):
            errors["heartbeats"] = "Each heartbeat writes either a fixed value or value_from a register."
        if errors:
            raise ValidationError(errors)


def _is_list_of_dicts(value: object, keys: tuple[str, ...]) -> bool:
    return isinstance(value, list) and all(isinstance(v, dict) and set(keys) <= set(v) for v in value)


class Register(models.Model):
    """One value in a profile's register map: where it is, how it is encoded, what it means."""

    profile = models.ForeignKey(DeviceProfile, on_delete=models.CASCADE, related_name="registers")
    name = models.SlugField(max_length=64)
    description = models.CharField(max_length=300, blank=True)
    function = models.CharField(max_length=16, choices=Function, default=Function.HOLDING)
    address = models.PositiveIntegerField(
        help_text="0-based protocol (PDU) address, as sent on the wire: holding register "
        "40001 in a vendor manual is address 0 (see docs/profiles.md).",
        validators=[MaxValueValidator(65535)],
    )
    data_type = models.CharField(max_length=16, choices=DataType, default=DataType.UINT16)
    length = models.PositiveSmallIntegerField(
        default=1,
        validators=[MinValueValidator(1), MaxValueValidator(125)],
        help_text="Registers occupied (must match the type; free for string and bytes).",
    )
    bit = models.PositiveSmallIntegerField(
        null=True, blank=True, validators=[MaxValueValidator(15)], help_text="For type 'bit'."
    )
    mask = models.PositiveBigIntegerField(
        null=True, blank=True, help_text="Bit field of an integer: value = (raw & mask) >> lowest bit."
    )
    byte_order = models.CharField(max_length=4, choices=ByteOrder, default=ByteOrder.ABCD)
    encoding = models.CharField(max_length=16, choices=StringEncoding, default=StringEncoding.ASCII)
    scale = models.FloatField(default=1.0, help_text="value = raw × scale + offset")
    offset = models.FloatField(default=0.0)
    unit = models.CharField(max_length=16, blank=True)
    role = models.CharField(max_length=32, choices=Role, blank=True, default=Role.NONE)
    access = models.CharField(max_length=2, choices=Access, default=Access.READ)
    write_min = models.FloatField(null=True, blank=True)
    write_max = models.FloatField(null=True, blank=True)
    poll_group = models.CharField(max_length=8, choices=PollGroup, default=PollGroup.FAST)
    unavailable = models.BigIntegerField(
        null=True, blank=True, help_text="Raw value meaning 'not available' (e.g. 65535)."
    )
    unit_id = models.PositiveSmallIntegerField(
        null=True,
        blank=True,
        validators=[MaxValueValidator(255)],
        help_text="Read from this unit id instead of the charge point's (Alfen station registers: 200).",
    )
    enum = models.JSONField(default=dict, blank=True, help_text='Raw code → meaning, e.g. {"0": "off"}.')

    class Meta:
        ordering = ["profile", "function", "address"]
        constraints = [
            models.UniqueConstraint(
                fields=["profile", "name"],
                name="unique_register_name",
                violation_error_message="Another register of this profile already has this name.",
            ),
            models.UniqueConstraint(
                fields=["profile", "role"],
                condition=~models.Q(role=""),
                name="unique_register_role",
                violation_error_message="Another register of this profile already has this role.",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name}@{self.address}"

    @property
    def end_address(self) -> int:
        """One past the last address this register occupies."""
        return self.address + register_count(self.data_type, self.length)

    def clean(self) -> None:
        super().clean()
        if self.address is None or self.length is None:
            return  # field validation already reported it
        errors = register_problems(self.to_spec())
        if errors:
            raise ValidationError(errors)

    def to_spec(self) -> RegisterSpec:
        return RegisterSpec(**{f.name: getattr(self, f.name) for f in fields(RegisterSpec)})


class StatusRule(models.Model):
    """Maps one code of a status register to the IEC 61851 state and the operator status.

    Rules are tried in `position` order; the first whose register holds its code wins.
    """

    profile = models.ForeignKey(DeviceProfile, on_delete=models.CASCADE, related_name="status_rules")
    position = models.PositiveSmallIntegerField(default=0)
    register = models.SlugField(max_length=64, help_text="Name of the status register in this profile.")
    code = models.CharField(max_length=32, help_text="Decoded value, e.g. 2, or C2 for text states.")
    iec61851_state = models.CharField(max_length=1, choices=Iec61851State)
    status = models.CharField(max_length=16, choices=OperatorStatus)
    description = models.CharField(max_length=200, blank=True)

    class Meta:
        ordering = ["profile", "position"]
        constraints = [
            models.UniqueConstraint(
                fields=["profile", "register", "code"],
                name="unique_status_code",
                violation_error_message="This status code is already mapped in this profile.",
            )
        ]

    def __str__(self) -> str:
        return f"{self.register}={self.code} → {self.iec61851_state}/{self.status}"
