"""Typed client for the nubes API (used by the CLI, the agent and the tests)."""

from nubes.client import identity
from nubes.client.core import ApiError, NubesClient, fetch_pinned_ca, load_config

__all__ = ["ApiError", "NubesClient", "fetch_pinned_ca", "identity", "load_config"]
