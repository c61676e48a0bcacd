"""PLACEHOLDER: its lane replaces this module (see /work/coord/DESIGN10.md)."""

from django.http import HttpResponse


def fleet_power_history(request, **kwargs) -> HttpResponse:
    return HttpResponse("not yet", status=501)


def charge_point_history(request, **kwargs) -> HttpResponse:
    return HttpResponse("not yet", status=501)
