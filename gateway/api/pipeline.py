"""API: pipeline (stub; its lane fills it in)."""

urlpatterns: list = []
