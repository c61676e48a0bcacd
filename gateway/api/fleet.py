"""API: fleet (stub; its lane fills it in)."""

urlpatterns: list = []
