"""Move profiles between the database, their spec and their JSON file form."""

import json
from dataclasses import fields
from pathlib import Path
from typing import Any

from django.db import transaction

from gateway.profiles.spec import (
    Heartbeat,
    ProfileFormatError,
    ProfileSpec,
    ReadBlock,
    RegisterSpec,
    StatusRule,
)
from gateway.profiles.validate import profile_problems

SHIPPED_DIR = Path(__file__).parent / "shipped"
_REGISTER_FIELDS = [f.name for f in fields(RegisterSpec)]
_PROFILE_SCALARS = [
    "vendor", "model", "source", "notes", "default_port", "default_unit_id", "max_gap",
    "max_read_registers", "fixed_read_size", "simulator",
]  # fmt: skip


def shipped_profile_files() -> list[Path]:
    return sorted(SHIPPED_DIR.glob("*.json"))


def load_spec(profile: Any) -> ProfileSpec:
    """Read a DeviceProfile (with its registers and status rules) into an immutable spec."""
    registers = tuple(
        RegisterSpec(**{name: getattr(reg, name) for name in _REGISTER_FIELDS})
        for reg in sorted(profile.registers.all(), key=lambda r: (r.function, r.address))
    )
    rules = tuple(
        StatusRule(rule.register, rule.code, rule.iec61851_state, rule.status, rule.description)
        for rule in sorted(profile.status_rules.all(), key=lambda r: r.position)
    )
    return ProfileSpec(
        slug=profile.slug,
        name=profile.name,
        registers=registers,
        status_rules=rules,
        read_blocks=tuple(ReadBlock(**block) for block in profile.read_blocks or []),
        derived=tuple(profile.derived or []),
        heartbeats=tuple(Heartbeat(**hb) for hb in profile.heartbeats or []),
        **{name: getattr(profile, name) for name in _PROFILE_SCALARS},
    )


def save_spec(spec: ProfileSpec, profile_model: Any, register_model: Any, rule_model: Any) -> Any:
    """Create or replace a profile from a spec. Takes the model classes so migrations can use it."""
    data = spec.to_dict()
    with transaction.atomic():
        profile, _ = profile_model.objects.update_or_create(
            slug=spec.slug,
            defaults={
                "name": spec.name,
                "read_blocks": data["read_blocks"],
                "derived": data["derived"],
                "heartbeats": data["heartbeats"],
                **{name: getattr(spec, name) for name in _PROFILE_SCALARS},
            },
        )
        register_model.objects.filter(profile=profile).delete()
        rule_model.objects.filter(profile=profile).delete()
        register_model.objects.bulk_create(
            register_model(profile=profile, **{name: getattr(reg, name) for name in _REGISTER_FIELDS})
            for reg in spec.registers
        )
        rule_model.objects.bulk_create(
            rule_model(
                profile=profile,
                position=position,
                register=rule.register,
                code=rule.code,
                iec61851_state=rule.iec61851_state,
                status=rule.status,
                description=rule.description,
            )
            for position, rule in enumerate(spec.status_rules)
        )
    return profile


def parse_profile_json(text: str | bytes, origin: str = "profile") -> ProfileSpec:
    """Parse and check a profile document; ProfileFormatError says what is wrong and where."""
    try:
        data = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProfileFormatError(f"{origin}: not valid JSON: {exc}") from exc
    spec = ProfileSpec.from_dict(data)
    problems = profile_problems(spec)
    if problems:
        raise ProfileFormatError(f"{origin}: " + "; ".join(problems))
    return spec


def read_spec_file(path: Path) -> ProfileSpec:
    return parse_profile_json(path.read_bytes(), origin=path.name)


def export_profile_json(spec: ProfileSpec) -> str:
    return json.dumps(spec.to_dict(), indent=2, ensure_ascii=False) + "\n"
