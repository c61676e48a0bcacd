"""Device profiles: a charger model's register map and status table, as data editable in the admin."""

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
)
from gateway.profiles.codec import FIXED_LENGTHS, register_count


class DeviceProfile(models.Model):
    """How to read one charger model: its registers, their encoding and its status codes."""

    slug = models.SlugField(unique=True)
    name = models.CharField(max_length=200)
    vendor = models.CharField(max_length=100, blank=True)
    model = models.CharField(max_length=200, blank=True)
    source = models.TextField(blank=True, help_text="Where the register map comes from (cite it).")
    notes = models.TextField(blank=True, help_text="Quirks and disagreements between sources.")
    max_gap = models.PositiveSmallIntegerField(
        default=8,
        validators=[MaxValueValidator(124)],
        help_text="Largest run of unused registers a single read may span.",
    )

    class Meta:
        ordering = ["vendor", "name"]

    def __str__(self) -> str:
        return self.name


class Register(models.Model):
    """One value in a profile's register map: where it is, how it is encoded, what it means."""

    profile = models.ForeignKey(DeviceProfile, on_delete=models.CASCADE, related_name="registers")
    name = models.SlugField(max_length=64, allow_unicode=False)
    description = models.CharField(max_length=300, blank=True)
    function = models.CharField(max_length=16, choices=Function, default=Function.HOLDING)
    address = models.PositiveIntegerField(
        help_text="0-based protocol (PDU) address, as sent on the wire: holding register "
        "40001 in a vendor manual is address 0.",
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
    byte_order = models.CharField(max_length=4, choices=ByteOrder, default=ByteOrder.ABCD)
    scale = models.FloatField(default=1.0, help_text="value = raw × scale + offset")
    offset = models.FloatField(default=0.0)
    unit = models.CharField(max_length=16, blank=True)
    role = models.CharField(max_length=32, choices=Role, blank=True, default=Role.NONE)
    access = models.CharField(max_length=2, choices=Access, default=Access.READ)
    write_min = models.FloatField(null=True, blank=True)
    write_max = models.FloatField(null=True, blank=True)
    poll_group = models.CharField(max_length=8, choices=PollGroup, default=PollGroup.FAST)
    enum = models.JSONField(default=dict, blank=True, help_text='Raw code → meaning, e.g. {"0": "off"}.')

    class Meta:
        ordering = ["profile", "function", "address"]
        constraints = [
            models.UniqueConstraint(fields=["profile", "name"], name="unique_register_name"),
            models.UniqueConstraint(
                fields=["profile", "role"],
                condition=~models.Q(role=""),
                name="unique_register_role",
                violation_error_message="Another register of this profile already has this role.",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.profile.slug}:{self.name}@{self.address}"

    @property
    def end_address(self) -> int:
        """One past the last address this register occupies."""
        return self.address + register_count(self.data_type, self.length)

    def clean(self) -> None:
        super().clean()
        errors: dict[str, str] = {}
        bit_functions = (Function.COIL, Function.DISCRETE_INPUT)
        if (self.data_type == DataType.BOOL) != (self.function in bit_functions):
            errors["data_type"] = "Coils and discrete inputs hold type 'bool', and only they do."
        expected = FIXED_LENGTHS.get(self.data_type)
        if expected is not None and self.length != expected:
            errors["length"] = f"Type {self.data_type} occupies {expected} register(s), not {self.length}."
        if self.data_type == DataType.BIT and self.bit is None:
            errors["bit"] = "Type 'bit' needs the bit number (0-15)."
        if self.address is not None and self.length and self.end_address > 65536:
            errors["address"] = f"Address {self.address} + {self.length} register(s) runs past 65535."
        if self.access == Access.READ and (self.write_min is not None or self.write_max is not None):
            errors["access"] = "A read-only register cannot have a write range."
        if self.write_min is not None and self.write_max is not None and self.write_min > self.write_max:
            errors["write_max"] = "Write maximum is below the write minimum."
        if self.role and self.role not in Role.values:
            errors["role"] = f"Unknown role {self.role!r}."
        if not isinstance(self.enum, dict):
            errors["enum"] = "Enum must be a JSON object of raw code → meaning."
        if errors:
            raise ValidationError(errors)


class StatusCode(models.Model):
    """Maps one vendor status code to the IEC 61851 state and the operator status."""

    profile = models.ForeignKey(DeviceProfile, on_delete=models.CASCADE, related_name="status_codes")
    code = models.IntegerField()
    iec61851_state = models.CharField(max_length=1, choices=Iec61851State)
    status = models.CharField(max_length=16, choices=OperatorStatus)
    description = models.CharField(max_length=200, blank=True)

    class Meta:
        ordering = ["profile", "code"]
        constraints = [
            models.UniqueConstraint(
                fields=["profile", "code"],
                name="unique_status_code",
                violation_error_message="This status code is already mapped in this profile.",
            )
        ]

    def __str__(self) -> str:
        return f"{self.code} → {self.iec61851_state}/{self.status}"
