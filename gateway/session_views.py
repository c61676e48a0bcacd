"""PLACEHOLDER: its lane replaces this module (see /work/coord/DESIGN10.md)."""

from django.http import HttpResponse


def sessions(request, **kwargs) -> HttpResponse:
    return HttpResponse("not yet", status=501)


def sessions_csv(request, **kwargs) -> HttpResponse:
    return HttpResponse("not yet", status=501)


def session_detail(request, **kwargs) -> HttpResponse:
    return HttpResponse("not yet", status=501)
