"""The profiles the simulator can impersonate: the database's, then the shipped files'."""

from collections.abc import Sequence

from gateway.models import DeviceProfile
from gateway.profiles.spec import ProfileSpec
from gateway.profiles.store import load_spec, read_spec_file, shipped_profile_files


class UnknownProfile(LookupError):
    """A profile slug that is neither in the database nor shipped."""


def known_slugs() -> list[str]:
    """Every slug the simulator can serve."""
    shipped = {path.stem for path in shipped_profile_files()}
    return sorted(shipped | set(DeviceProfile.objects.values_list("slug", flat=True)))


def load_profiles(slugs: Sequence[str]) -> list[ProfileSpec]:
    """Specs for the slugs, in order: the database's (an operator may have edited it), else the shipped file.

    The shipped fallback lets `simulate` impersonate a charger whose file is newer than the database.
    """
    shipped = {path.stem: path for path in shipped_profile_files()}
    found = {profile.slug: profile for profile in DeviceProfile.objects.filter(slug__in=slugs)}
    specs: list[ProfileSpec] = []
    for slug in slugs:
        if slug in found:
            specs.append(load_spec(found[slug]))
        elif slug in shipped:
            specs.append(read_spec_file(shipped[slug]))
        else:
            raise UnknownProfile(f"No device profile {slug!r} (known: {', '.join(known_slugs()) or 'none'}).")
    return specs
