"""The REST API (/api/v1/): Django REST framework views over the same services as the pages."""
