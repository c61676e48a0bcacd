"""API: operator commands through the one service (gateway.commands.service.send_command, via="api"),
their results and the audit.

- POST charge-points/{slug}/commands/ {"action", "value"?}: needs gateway.send_command, as the
  page does (403 "not_permitted" before anything else, not audited, as on the page). 201 with the
  pending command and a Location to poll; a refusal (unknown action, unsupported by the profile,
  value missing or out of range, charge point disabled) is a 400 whose error code is the reason
  code, with the audited (failed) command; Kafka not taking it is a 503 (the row says so too).
- GET commands/{id}/: the command and its outcome (poll until status is not "pending").
- GET commands/?charge_point=&site=&status=pending|applied|failed&action=&via=: the audit, newest
  first, in cursor pages.
Reads need a login only: the charge point page shows every user the recent commands.
"""

import logging
from typing import Any

from django import forms
from django.db.models import QuerySet
from django.shortcuts import get_object_or_404
from django.urls import path, reverse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import generics, permissions
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from gateway.api.domain_serializers import (
    ApiErrorSerializer,
    CommandRefusalSerializer,
    CommandRequestSerializer,
    CommandSerializer,
    valid_filters,
)
from gateway.api.errors import error_body
from gateway.api.etag import ETagMixin
from gateway.api.pagination import CursorPage
from gateway.choices import OPERATOR_ACTIONS, CommandAction, CommandStatus, FailureReason
from gateway.commands import service
from gateway.models import ChargePoint, Command

logger = logging.getLogger(__name__)

# Newest first; the position is created_at (indexed), ties broken by id.
ORDERING = ("-created_at", "-id")


class CanSendCommands(permissions.BasePermission):
    """gateway.send_command, checked before the request is read (the page's rule)."""

    message = "You may not send commands (the gateway.send_command permission)."
    code = FailureReason.NOT_PERMITTED.value

    def has_permission(self, request: Request, view: APIView) -> bool:
        if request.user.has_perm(service.PERMISSION):
            return True
        logger.warning(
            "user %s (id %s) may not send commands: a command to charge point %r refused (api)",
            request.user.get_username(),
            request.user.pk,
            view.kwargs.get("slug"),
        )
        return False


# Where a command comes from (Command.via): the page, sendcommand, the API, a site's load management.
COMMAND_ORIGINS = ("web", "cli", "api", "controller")


class CommandFilter(forms.Form):
    """The audit's filters (all optional)."""

    charge_point = forms.SlugField(required=False)
    site = forms.SlugField(required=False)
    status = forms.ChoiceField(choices=[("", "any"), *CommandStatus.choices], required=False)
    action = forms.ChoiceField(choices=[("", "any"), *CommandAction.choices], required=False)
    via = forms.ChoiceField(
        choices=[("", "any"), *((via, via) for via in COMMAND_ORIGINS)],
        required=False,
    )

    def filter(self, commands: QuerySet[Command]) -> QuerySet[Command]:
        data = self.cleaned_data
        lookups = {
            "charge_point_slug": data["charge_point"],
            "site_slug": data["site"],
            "status": data["status"],
            "action": data["action"],
            "via": data["via"],
        }
        return commands.filter(**{field: value for field, value in lookups.items() if value})


class CommandPage(CursorPage):
    ordering = ORDERING


class SendCommandView(APIView):
    """Send one command to a charge point through the same service as the page and `sendcommand`."""

    permission_classes = [permissions.IsAuthenticated, CanSendCommands]

    @extend_schema(
        operation_id="charge_points_commands_create",
        request=CommandRequestSerializer,
        responses={
            201: CommandSerializer,
            400: CommandRefusalSerializer,
            401: ApiErrorSerializer,
            403: ApiErrorSerializer,
            404: ApiErrorSerializer,
            503: CommandRefusalSerializer,
        },
    )
    def post(self, request: Request, slug: str) -> Response:
        charge_point = get_object_or_404(ChargePoint.objects.select_related("site", "profile"), slug=slug)
        asked = CommandRequestSerializer(data=request.data)
        asked.is_valid(raise_exception=True)
        action, value = asked.validated_data["action"], asked.validated_data.get("value")
        try:
            command = service.send_command(
                charge_point, action, value, user=request.user, via="api", actions=OPERATOR_ACTIONS
            )
        except service.CommandRefused as refused:
            return refusal(refused)
        location = reverse("api:command", args=[command.id])
        return Response(CommandSerializer(command).data, status=201, headers={"Location": location})


def refusal(refused: service.CommandRefused) -> Response:
    """The error body with the reason code, and the audited command (a client can find it in the audit)."""
    if refused.reason_code == FailureReason.NOT_PERMITTED:
        status = 403
    elif refused.reason_code == FailureReason.TIMEOUT:
        status = 503  # Kafka did not take it: the command was fine, the pipeline was not
    else:
        status = 400
    body: dict[str, Any] = error_body(status, refused.reason_code, refused.reason)
    body["command"] = CommandSerializer(refused.command).data if refused.command is not None else None
    return Response(body, status=status)


class CommandDetailView(ETagMixin, generics.RetrieveAPIView):
    """One command and its outcome."""

    serializer_class = CommandSerializer
    queryset = Command.objects.all()
    lookup_url_kwarg = "command_id"


class CommandListView(ETagMixin, generics.ListAPIView):
    """The command audit: every command sent (refused ones too), newest first."""

    serializer_class = CommandSerializer
    pagination_class = CommandPage
    ordering = ORDERING

    def get_queryset(self) -> QuerySet[Command]:
        return valid_filters(CommandFilter(self.request.query_params)).filter(Command.objects.all())

    @extend_schema(
        operation_id="commands_list",
        parameters=[
            OpenApiParameter("charge_point", OpenApiTypes.STR, description="A charge point's slug."),
            OpenApiParameter("site", OpenApiTypes.STR, description="A site's slug."),
            OpenApiParameter("status", OpenApiTypes.STR, enum=CommandStatus.values),
            OpenApiParameter("action", OpenApiTypes.STR, enum=CommandAction.values),
            OpenApiParameter("via", OpenApiTypes.STR, enum=list(COMMAND_ORIGINS)),
        ],
    )
    def get(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().get(request, *args, **kwargs)


urlpatterns = [
    path("charge-points/<slug:slug>/commands/", SendCommandView.as_view(), name="charge-point-commands"),
    path("commands/", CommandListView.as_view(), name="commands"),
    path("commands/<uuid:command_id>/", CommandDetailView.as_view(), name="command"),
]
