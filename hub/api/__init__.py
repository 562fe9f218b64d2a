"""The REST API under ``/api/v1``: routes, auth, errors, OpenAPI document."""

from .routes import API_PREFIX, setup_api

__all__ = ["API_PREFIX", "setup_api"]
