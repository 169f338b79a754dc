"""Typed client for the nubes API (used by the CLI, the agent and the tests)."""

from nubes.client.core import ApiError, NubesClient, load_config

__all__ = ["ApiError", "NubesClient", "load_config"]
