"""Device profiles: a charger model's register map and status rules, as data editable in the admin."""

from dataclasses import fields

from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models

from gateway.choices import (
    Access,
    ByteOrder,
    DataType,
    Function,
    Iec61851State,
    OperatorStatus,
    PollGroup,
    Role,
    StatusMatch,
    StringEncoding,
)
from gateway.profiles.codec import register_count
from gateway.profiles.spec import MAX_PACING_GAP_MS, RegisterSpec
from gateway.profiles.validate import json_field_problems, register_problems


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
    commands = models.JSONField(
        default=list,
        blank=True,
        help_text="How operator commands are done (docs/profiles.md, Commands), e.g. "
        '[{"action": "pause", "register": "max_current", "value": 0}] or '
        '[{"action": "pause", "unsupported": "no pause register"}].',
    )
    simulator = models.JSONField(default=dict, blank=True, help_text="Hints for manage.py simulate.")
    request_gap_ms = models.PositiveIntegerField(
        "gap between requests (ms)",
        default=0,
        validators=[MaxValueValidator(MAX_PACING_GAP_MS, f"At most {MAX_PACING_GAP_MS} ms.")],
        help_text="The vendor's least time from one answer to the next request (KEBA: 500). "
        "0: back to back. Charge points can relax it.",
    )
    write_gap_ms = models.PositiveIntegerField(
        "gap between writes (ms)",
        default=0,
        validators=[MaxValueValidator(MAX_PACING_GAP_MS, f"At most {MAX_PACING_GAP_MS} ms.")],
        help_text="The vendor's least time between two writes (KEBA: 5000). 0: no extra gap.",
    )
    pacing_source = models.TextField(
        blank=True, help_text="Where the vendor asks for this pacing (cite it; required when pacing is set)."
    )

    class Meta:
        ordering = ["vendor", "name"]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        super().clean()
        # The same shape checks and rules as a profile import: unknown keys, wrong types, reads the
        # protocol does not allow and roles that cannot be derived never reach the poller. Whether a
        # heartbeat or a command names a suitable register needs the registers inline
        # (admin.DeviceProfileForm).
        errors: dict[str, str] = json_field_problems(self.read_blocks, self.heartbeats, self.derived, self.commands)
        if (
            "heartbeats" not in errors
            and self.write_gap_ms
            and any(
                isinstance(hb["interval_s"], int | float) and hb["interval_s"] * 1000 < self.write_gap_ms
                for hb in self.heartbeats
            )
        ):
            errors["write_gap_ms"] = "A heartbeat is written more often than this gap allows."
        if (self.request_gap_ms or self.write_gap_ms) and not self.pacing_source.strip():
            errors["pacing_source"] = "Cite where the vendor asks for this pacing."
        if errors:
            raise ValidationError(errors)


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
    write_values = models.JSONField(
        default=list,
        blank=True,
        help_text="Single values allowed besides the range, e.g. [0] (0 A pauses); without a range, "
        "the only values allowed, e.g. [0, 1].",
    )
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

    Rules are tried in `position` order; the first whose register holds its code (or, with match
    "is_not", any other value) wins: faults first, then unavailable, then connector states.
    """

    profile = models.ForeignKey(DeviceProfile, on_delete=models.CASCADE, related_name="status_rules")
    position = models.PositiveSmallIntegerField(default=0)
    register = models.SlugField(max_length=64, help_text="Name of the status register in this profile.")
    code = models.CharField(max_length=32, help_text="Decoded value, e.g. 2, or C2 for text states.")
    iec61851_state = models.CharField(max_length=1, choices=Iec61851State)
    status = models.CharField(max_length=16, choices=OperatorStatus)
    description = models.CharField(max_length=200, blank=True)
    match = models.CharField(
        max_length=8,
        choices=StatusMatch,
        default=StatusMatch.IS,
        help_text="'is not': the rule applies to every value but the code (an error code other than 0).",
    )

    class Meta:
        ordering = ["profile", "position"]
        constraints = [
            models.UniqueConstraint(
                fields=["profile", "register", "code", "match"],
                name="unique_status_code",
                violation_error_message="This status code is already mapped in this profile.",
            )
        ]

    def __str__(self) -> str:
        sign = "≠" if self.match == StatusMatch.IS_NOT else "="
        return f"{self.register}{sign}{self.code} → {self.iec61851_state}/{self.status}"
