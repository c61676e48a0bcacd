"""Move profiles between the database and their spec / JSON form."""

import json
from pathlib import Path
from typing import Any

from django.db import transaction

from gateway.profiles.spec import ProfileSpec, StatusSpec

SHIPPED_DIR = Path(__file__).parent / "shipped"


def shipped_profile_files() -> list[Path]:
    return sorted(SHIPPED_DIR.glob("*.json"))


def load_spec(profile: Any) -> ProfileSpec:
    """Read a DeviceProfile (and its registers and status codes) into an immutable spec."""
    from gateway.profiles.spec import RegisterSpec

    registers = tuple(
        RegisterSpec(
            name=reg.name,
            address=reg.address,
            function=reg.function,
            data_type=reg.data_type,
            length=reg.length,
            bit=reg.bit,
            byte_order=reg.byte_order,
            scale=reg.scale,
            offset=reg.offset,
            unit=reg.unit,
            role=reg.role,
            access=reg.access,
            write_min=reg.write_min,
            write_max=reg.write_max,
            poll_group=reg.poll_group,
            enum=dict(reg.enum or {}),
            description=reg.description,
        )
        for reg in profile.registers.all().order_by("function", "address")
    )
    status_codes = {
        sc.code: StatusSpec(sc.iec61851_state, sc.status, sc.description) for sc in profile.status_codes.all()
    }
    return ProfileSpec(
        slug=profile.slug,
        name=profile.name,
        registers=registers,
        status_codes=status_codes,
        vendor=profile.vendor,
        model=profile.model,
        source=profile.source,
        notes=profile.notes,
        max_gap=profile.max_gap,
    )


def save_spec(spec: ProfileSpec, profile_model: Any, register_model: Any, status_model: Any) -> Any:
    """Create or replace a profile from a spec. Takes the model classes so migrations can use it."""
    with transaction.atomic():
        profile, _ = profile_model.objects.update_or_create(
            slug=spec.slug,
            defaults={
                "name": spec.name,
                "vendor": spec.vendor,
                "model": spec.model,
                "source": spec.source,
                "notes": spec.notes,
                "max_gap": spec.max_gap,
            },
        )
        register_model.objects.filter(profile=profile).delete()
        status_model.objects.filter(profile=profile).delete()
        register_model.objects.bulk_create(
            register_model(
                profile=profile,
                **{k: v for k, v in reg.__dict__.items()},
            )
            for reg in spec.registers
        )
        status_model.objects.bulk_create(
            status_model(
                profile=profile,
                code=code,
                iec61851_state=st.iec61851_state,
                status=st.status,
                description=st.description,
            )
            for code, st in spec.status_codes.items()
        )
    return profile


def read_spec_file(path: Path) -> ProfileSpec:
    return ProfileSpec.from_dict(json.loads(path.read_text()))
