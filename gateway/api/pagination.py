"""Cursor pagination: stable under inserts (telemetry, sessions and alerts grow while one pages)."""

from rest_framework.pagination import CursorPagination

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000


class CursorPage(CursorPagination):
    """`?limit=` (≤ 1000) items per page; `next`/`previous` are opaque cursor links.

    Views set `ordering` to a unique, indexed order (e.g. ("-started_at", "-id")).
    """

    page_size = DEFAULT_PAGE_SIZE
    page_size_query_param = "limit"
    max_page_size = MAX_PAGE_SIZE
    ordering = "-pk"
