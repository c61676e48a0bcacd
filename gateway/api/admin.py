"""Admin: API tokens. Issued here and shown once; listed by prefix; revoked, never edited into validity.

A token acts with all of its user's permissions, so a user who is not a superuser issues, sees and
revokes only their own tokens: a staff member with the token permissions cannot mint one for an
administrator.
"""

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils import timezone

from gateway.models import ApiToken


class ApiTokenAddForm(forms.ModelForm):
    """Who the token is for, what uses it, until when: the rest is made when it is issued."""

    class Meta:
        model = ApiToken
        fields = ["user", "name", "expires_at"]

    def clean_expires_at(self) -> Any:
        expires_at = self.cleaned_data.get("expires_at")
        if expires_at is not None and expires_at <= timezone.now():
            raise forms.ValidationError("The expiry must be in the future.")
        return expires_at


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    list_display = ["name", "prefix_shown", "user", "created_at", "last_used_at", "expires_at", "revoked_at", "state"]
    list_filter = ["revoked_at", "expires_at"]
    search_fields = ["name", "prefix", "user__username"]
    list_select_related = ["user"]
    actions = ["revoke"]
    # Only the name changes after issue. The digest is never shown: no use to a reader, and it
    # lets anyone who sees it check guesses offline.
    readonly_fields = [
        "user", "prefix_shown", "created_at", "expires_at", "last_used_at", "revoked_at", "state"
    ]  # fmt: skip
    fields = ["user", "name", "prefix_shown", "created_at", "expires_at", "last_used_at", "revoked_at", "state"]

    def get_form(self, request: HttpRequest, obj: ApiToken | None = None, change: bool = False, **kwargs: Any):
        if obj is None:
            kwargs["form"] = ApiTokenAddForm
        return super().get_form(request, obj, change=change, **kwargs)

    def get_fields(self, request: HttpRequest, obj: ApiToken | None = None) -> list[str]:
        return ApiTokenAddForm.Meta.fields if obj is None else self.fields

    def get_readonly_fields(self, request: HttpRequest, obj: ApiToken | None = None) -> list[str]:
        return [] if obj is None else self.readonly_fields

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        queryset = super().get_queryset(request)
        return queryset if request.user.is_superuser else queryset.filter(user=request.user)

    def formfield_for_foreignkey(self, db_field: Any, request: HttpRequest, **kwargs: Any) -> Any:
        if db_field.name == "user":
            kwargs["initial"] = request.user.pk
            if not request.user.is_superuser:
                kwargs["queryset"] = db_field.remote_field.model.objects.filter(pk=request.user.pk)
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    def save_model(self, request: HttpRequest, obj: ApiToken, form: Any, change: bool) -> None:
        if change:
            super().save_model(request, obj, form, change)
            return
        issued, raw = ApiToken.issue(obj.user, obj.name, expires_at=obj.expires_at)
        # The admin goes on with `obj` (its log entry, the redirect): make it the issued row.
        obj.pk, obj.prefix, obj.digest, obj.created_at = issued.pk, issued.prefix, issued.digest, issued.created_at
        self.message_user(
            request,
            f"The token for “{issued.name}” is {raw} — copy it now: it is stored only as a hash and "
            "is never shown again.",
            messages.SUCCESS,
        )

    @admin.display(description="token")
    def prefix_shown(self, token: ApiToken) -> str:
        return f"{token.prefix}…"

    @admin.display(description="state")
    def state(self, token: ApiToken) -> str:
        if token.revoked_at is not None:
            return "revoked"
        return "active" if token.active else "expired"

    @admin.action(description="Revoke the selected tokens", permissions=["change"])
    def revoke(self, request: HttpRequest, queryset: QuerySet) -> None:
        revoked = queryset.filter(revoked_at__isnull=True).update(revoked_at=timezone.now())
        self.message_user(request, f"Revoked {revoked} token(s).", messages.SUCCESS)
