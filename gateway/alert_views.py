"""PLACEHOLDER: its lane replaces this module (see /work/coord/DESIGN10.md)."""

from django.http import HttpResponse


def alerts(request, **kwargs) -> HttpResponse:
    return HttpResponse("not yet", status=501)


def acknowledge(request, **kwargs) -> HttpResponse:
    return HttpResponse("not yet", status=501)
