"""The HTTP API (``conveyor api``): ``create_app`` builds the FastAPI application."""

from conveyor.api.app import create_app

__all__ = ["create_app"]
