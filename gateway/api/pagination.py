"""Cursor pagination: stable under inserts (telemetry, sessions and alerts grow while one pages)."""

from typing import Any

from rest_framework.pagination import CursorPagination

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000


class CursorPage(CursorPagination):
    """`?limit=` (≤ 1000) items per page; `next`/`previous` are opaque cursor links.

    Views set `ordering` to a unique, indexed order (e.g. "slug", or ("-started_at", "-id")). The
    cursor holds the position in the first field (ties are skipped by an offset), so a row inserted
    while a client pages never shifts the pages: no duplicates, no gaps.
    """

    page_size = DEFAULT_PAGE_SIZE
    page_size_query_param = "limit"
    max_page_size = MAX_PAGE_SIZE
    ordering = "-pk"

    def get_ordering(self, request: Any, queryset: Any, view: Any) -> tuple[str, ...]:
        # DRF reads an ordering from the view only through an OrderingFilter; ours set it directly.
        has_ordering_filter = any(hasattr(backend, "get_ordering") for backend in getattr(view, "filter_backends", []))
        ordering = getattr(view, "ordering", None)
        if ordering and not has_ordering_filter:
            return (ordering,) if isinstance(ordering, str) else tuple(ordering)
        return super().get_ordering(request, queryset, view)
