"""API: sessions (stub; its lane fills it in)."""

urlpatterns: list = []
