"""Move profiles between the database, their spec and their JSON file form."""

import json
import logging
import math
from dataclasses import fields
from pathlib import Path
from typing import Any, BinaryIO

from django.core.exceptions import NON_FIELD_ERRORS, ValidationError
from django.db import DataError, IntegrityError, transaction

from gateway.conf import setting
from gateway.profiles.spec import (
    CommandSpec,
    Heartbeat,
    ProfileFormatError,
    ProfileSpec,
    ReadBlock,
    RegisterSpec,
    StatusRule,
    derived_from_json,
    entries_from_json,
)
from gateway.profiles.validate import METER_ROLES, profile_problems

logger = logging.getLogger(__name__)

SHIPPED_DIR = Path(__file__).parent / "shipped"
# Site meter profiles (docs/profiles.md, "Site meter profiles"): apart, so that every file of
# SHIPPED_DIR stays a charger's (the simulator, the golden tables and the tests take them as such).
METER_DIR = SHIPPED_DIR / "meters"
# The shipped site meter: what `simulate`'s meter serves and a demo site is metered with.
SITE_METER_PROFILE = "eastron-sdm630"
_REGISTER_FIELDS = [f.name for f in fields(RegisterSpec)]
_PROFILE_SCALARS = [
    "vendor", "model", "source", "notes", "default_port", "default_unit_id", "max_gap",
    "max_read_registers", "fixed_read_size", "simulator", "request_gap_ms", "write_gap_ms", "pacing_source",
]  # fmt: skip


def shipped_profile_files() -> list[Path]:
    """The shipped charger profiles."""
    return sorted(SHIPPED_DIR.glob("*.json"))


def shipped_meter_files() -> list[Path]:
    """The shipped site meter profiles."""
    return sorted(METER_DIR.glob("*.json"))


def shipped_spec(slug: str) -> ProfileSpec:
    """The shipped file of a charger or meter profile, checked (FileNotFoundError if none is shipped)."""
    for directory in (SHIPPED_DIR, METER_DIR):
        path = directory / f"{slug}.json"
        if path.is_file():
            return read_spec_file(path)
    raise FileNotFoundError(f"no shipped profile {slug!r} in {SHIPPED_DIR} or {METER_DIR}")


def meter_profiles() -> Any:
    """The stored profiles a site may take as its meter (validate.is_meter_profile, in the database)."""
    from gateway.models import DeviceProfile  # late: the models import profiles/

    profiles = DeviceProfile.objects.filter(status_rules__isnull=True, commands=[], heartbeats=[])
    for role in METER_ROLES:
        profiles = profiles.filter(pk__in=DeviceProfile.objects.filter(registers__role=role).values("pk"))
    return profiles


def charger_profiles() -> Any:
    """The stored profiles a charge point may take: every profile but the meters'."""
    from gateway.models import DeviceProfile  # late: the models import profiles/

    return DeviceProfile.objects.exclude(pk__in=meter_profiles().values("pk"))


def load_spec(profile: Any) -> ProfileSpec:
    """Read a DeviceProfile (with its registers and status rules) into an immutable spec."""
    registers = tuple(
        RegisterSpec(**{name: getattr(reg, name) for name in _REGISTER_FIELDS})
        for reg in sorted(profile.registers.all(), key=lambda r: (r.function, r.address))
    )
    rules = tuple(
        StatusRule(rule.register, rule.code, rule.iec61851_state, rule.status, rule.description, rule.match)
        for rule in sorted(profile.status_rules.all(), key=lambda r: r.position)
    )
    return ProfileSpec(
        slug=profile.slug,
        name=profile.name,
        registers=registers,
        status_rules=rules,
        # Checked as an import checks them: a row stored before validation existed fails with a
        # ProfileFormatError that names the entry, not a TypeError deep in the poller.
        read_blocks=entries_from_json(ReadBlock, profile.read_blocks or [], "read_blocks"),
        derived=derived_from_json(profile.derived or []),
        heartbeats=entries_from_json(Heartbeat, profile.heartbeats or [], "heartbeats"),
        commands=entries_from_json(CommandSpec, profile.commands or [], "commands"),
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
                # A migration's historical model may predate a field (0002 runs before pacing existed).
                **({"commands": data["commands"]} if _has_field(profile_model, "commands") else {}),
                **{name: getattr(spec, name) for name in _PROFILE_SCALARS if _has_field(profile_model, name)},
            },
        )
        register_model.objects.filter(profile=profile).delete()
        rule_model.objects.filter(profile=profile).delete()
        # Only the columns the model has: an older migration's model lacks fields added later.
        register_columns = [name for name in _REGISTER_FIELDS if _has_field(register_model, name)]
        register_model.objects.bulk_create(
            register_model(profile=profile, **{name: _column(getattr(reg, name)) for name in register_columns})
            for reg in spec.registers
        )
        rule_columns = ["register", "code", "iec61851_state", "status", "description", "match"]
        rule_columns = [name for name in rule_columns if _has_field(rule_model, name)]
        rule_model.objects.bulk_create(
            rule_model(profile=profile, position=position, **{name: getattr(rule, name) for name in rule_columns})
            for position, rule in enumerate(spec.status_rules)
        )
    return profile


def _has_field(model: Any, name: str) -> bool:
    return any(field.name == name for field in model._meta.get_fields())


def _column(value: Any) -> Any:
    """A spec value as its database column holds it (JSON columns take lists, not tuples)."""
    return list(value) if isinstance(value, tuple) else value


def parse_profile_json(text: str | bytes, origin: str = "profile") -> ProfileSpec:
    """Parse and check a profile document; ProfileFormatError says what is wrong and where.

    The one validation path of every profile that enters: admin import, `profiles import` and the
    shipped files. A hostile document (huge, deeply nested, huge numbers, wrong types) gets a
    ProfileFormatError like any other bad one, never another exception.
    """
    limit = setting("PROFILE_MAX_BYTES")
    size = len(text) if isinstance(text, bytes) else len(text.encode("utf-8", "surrogatepass"))
    if size > limit:
        raise ProfileFormatError(f"{origin}: larger than the {limit}-byte limit for a profile (PROFILE_MAX_BYTES)")
    try:
        document = text.decode("utf-8-sig") if isinstance(text, bytes) else text
        data = json.loads(document, parse_int=_bounded_int, parse_float=_finite_float, parse_constant=_no_constant)
    except UnicodeDecodeError as exc:
        raise ProfileFormatError(f"{origin}: not UTF-8 text: {exc}") from exc
    except json.JSONDecodeError as exc:
        raise ProfileFormatError(f"{origin}: not valid JSON: {exc}") from exc
    except RecursionError as exc:
        raise ProfileFormatError(f"{origin}: nested too deeply to read (at most {MAX_NESTING} levels)") from exc
    except ValueError as exc:  # from the number hooks below
        raise ProfileFormatError(f"{origin}: {exc}") from exc
    try:
        _check_values(data)
        spec = ProfileSpec.from_dict(data)
        problems = list(dict.fromkeys(model_problems(spec) + profile_problems(spec)))
    except ProfileFormatError as exc:
        raise ProfileFormatError(f"{origin}: {exc}") from exc
    except (RecursionError, ValueError, OverflowError, TypeError, KeyError) as exc:
        # A shape the checks above should have refused: still the document's problem, not a crash.
        logger.warning("%s: profile refused by an unexpected %s", origin, type(exc).__name__, exc_info=True)
        raise ProfileFormatError(f"{origin}: cannot use this profile ({type(exc).__name__}: {exc})") from exc
    if problems:
        raise ProfileFormatError(f"{origin}: " + "; ".join(problem.rstrip(".") for problem in problems))
    return spec


def read_profile_bytes(stream: BinaryIO, origin: str) -> bytes:
    """Read a profile document, refusing one above the size limit without reading all of it."""
    limit = setting("PROFILE_MAX_BYTES")
    data = stream.read(limit + 1)
    if len(data) > limit:
        raise ProfileFormatError(f"{origin}: larger than the {limit}-byte limit for a profile (PROFILE_MAX_BYTES)")
    return data


def read_spec_file(path: Path) -> ProfileSpec:
    with path.open("rb") as stream:
        return parse_profile_json(read_profile_bytes(stream, path.name), origin=path.name)


def import_profile(data: bytes, origin: str) -> tuple[Any, bool]:
    """Check a profile document and create or replace its profile atomically: (profile, created).

    Raises ProfileFormatError, with nothing saved, when the document or the database refuses it.
    """
    from gateway.models import DeviceProfile, Register, StatusRule  # late: the models import profiles/

    spec = parse_profile_json(data, origin)
    created = not DeviceProfile.objects.filter(slug=spec.slug).exists()
    try:
        profile = save_spec(spec, DeviceProfile, Register, StatusRule)
    except (IntegrityError, DataError, OverflowError, ValueError) as exc:
        # A value the checks above let through but the database driver refuses: save_spec's
        # transaction has rolled back, so nothing is stored; the checks deserve a look.
        logger.warning("%s: the database refused a checked profile", origin, exc_info=True)
        raise ProfileFormatError(f"{origin}: the database refused the profile: {exc}") from exc
    return profile, created


def model_problems(spec: ProfileSpec) -> list[str]:
    """What the admin form's field validation says about a spec: slugs, lengths, ranges, choices.

    Runs the models' own validation on unsaved instances, so an import refuses whatever the admin
    form refuses. Uniqueness is left to profile_problems (an import replaces a profile of the same
    slug), and Register.clean is register_problems, which profile_problems already runs.
    """
    from gateway.models import DeviceProfile, Register, StatusRule  # late: the models import profiles/

    data = spec.to_dict()
    profile = DeviceProfile(
        slug=spec.slug,
        name=spec.name,
        read_blocks=data["read_blocks"],
        derived=data["derived"],
        heartbeats=data["heartbeats"],
        commands=data["commands"],
        **{name: getattr(spec, name) for name in _PROFILE_SCALARS if _has_field(DeviceProfile, name)},
    )
    problems = [
        message
        for message in _validation_messages(
            "profile", profile.full_clean, validate_unique=False, validate_constraints=False
        )
        # DeviceProfile.clean checks these with the rules profile_problems runs: say it once.
        if not message.startswith(_JSON_FIELD_PREFIXES)
    ]
    register_columns = [name for name in _REGISTER_FIELDS if _has_field(Register, name)]
    for reg in spec.registers:
        register = Register(**{name: _column(getattr(reg, name)) for name in register_columns})
        problems += _validation_messages(f"register {reg.name!r}", register.clean_fields, exclude=["profile"])
    for position, rule in enumerate(spec.status_rules):
        columns = {
            name: getattr(rule, name)
            for name in ("register", "code", "iec61851_state", "status", "description", "match")
        }
        status_rule = StatusRule(position=position, **{k: v for k, v in columns.items() if _has_field(StatusRule, k)})
        problems += _validation_messages(
            f"status rule {position} ({rule.register}={rule.code})",
            status_rule.full_clean,
            exclude=["profile"],
            validate_unique=False,
            validate_constraints=False,
        )
    return problems


_JSON_FIELD_PREFIXES = (
    "profile read_blocks: ", "profile heartbeats: ", "profile derived: ", "profile commands: ",
)  # fmt: skip


def _validation_messages(where: str, validate: Any, **options: Any) -> list[str]:
    """Run a model validation method; its errors as "<where> <field>: <message>" sentences."""
    try:
        validate(**options)
    except ValidationError as exc:
        return [
            f"{where} {field}: {message}" if field != NON_FIELD_ERRORS else f"{where}: {message}"
            for field, messages in exc.message_dict.items()
            for message in messages
        ]
    return []


MAX_NESTING = 16  # the documented format nests 4 deep; simulator hints may add a little
MAX_INTEGER_DIGITS = 20  # 2**64 has 20 digits; no register value, address or mask needs more


def _bounded_int(text: str) -> int:
    digits = len(text.lstrip("-"))
    if digits > MAX_INTEGER_DIGITS:
        raise ValueError(f"a number has {digits} digits ({text[:12]}...); a profile needs at most {MAX_INTEGER_DIGITS}")
    return int(text)


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text[:24]} is out of range")
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number a profile may hold (JSON has no NaN or Infinity)")


def _check_values(data: Any) -> None:
    """Refuse nesting deeper than MAX_NESTING and text the database cannot store (NUL, lone surrogates)."""
    stack = [(data, 1, "the profile")]
    while stack:
        value, depth, where = stack.pop()
        if depth > MAX_NESTING:
            raise ProfileFormatError(f"nested deeper than {MAX_NESTING} levels (in {where})")
        if isinstance(value, dict):
            for key, item in value.items():
                _check_text(key, where)
                stack.append((item, depth + 1, f"{where}[{key!r}]" if depth > 1 else repr(key)))
        elif isinstance(value, list):
            stack.extend((item, depth + 1, f"{where}[{index}]") for index, item in enumerate(value))
        elif isinstance(value, str):
            _check_text(value, where)


def _check_text(text: str, where: str) -> None:
    if "\x00" in text:
        raise ProfileFormatError(f"{where}: text must not contain NUL characters")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ProfileFormatError(f"{where}: text is not valid Unicode ({exc.reason})") from exc


def export_profile_json(spec: ProfileSpec) -> str:
    return json.dumps(spec.to_dict(), indent=2, ensure_ascii=False) + "\n"
