"""API: history (stub; its lane fills it in)."""

urlpatterns: list = []
