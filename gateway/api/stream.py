"""API: stream (stub; its lane fills it in)."""

urlpatterns: list = []
