"""API: commands (stub; its lane fills it in)."""

urlpatterns: list = []
