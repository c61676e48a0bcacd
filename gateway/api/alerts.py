"""API: alerts (stub; its lane fills it in)."""

urlpatterns: list = []
