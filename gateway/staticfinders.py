"""Serve Plotly.js from the plotly package's own bundle, so the dashboard works air-gapped."""

from pathlib import Path

import plotly
from django.contrib.staticfiles.finders import BaseFinder
from django.core.files.storage import FileSystemStorage

PLOTLY_BUNDLE = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
STATIC_PATH = "vendor/plotly.min.js"


class PlotlyFinder(BaseFinder):
    """Expose package_data/plotly.min.js as static/vendor/plotly.min.js."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        self.storage = FileSystemStorage(location=str(PLOTLY_BUNDLE.parent))
        self.storage.prefix = "vendor"

    def check(self, **kwargs: object) -> list:
        return []

    def find(self, path: str, find_all: bool = False, **kwargs: object) -> str | list[str]:
        if path == STATIC_PATH:
            return [str(PLOTLY_BUNDLE)] if find_all else str(PLOTLY_BUNDLE)
        return [] if find_all else ""

    def list(self, ignore_patterns: object):
        yield PLOTLY_BUNDLE.name, self.storage
