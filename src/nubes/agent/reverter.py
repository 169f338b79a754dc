"""Undo steps registered as a multi-step action goes; run in reverse if it fails."""

from __future__ import annotations

import logging
from collections.abc import Callable

log = logging.getLogger("nubes.agent")


class Reverter:
    def __init__(self) -> None:
        self._undo: list[tuple[str, Callable[[], object]]] = []

    def add(self, what: str, undo: Callable[[], object]) -> None:
        self._undo.append((what, undo))

    def fail(self) -> None:
        """Undo everything, newest first; one failing undo does not stop the others."""
        for what, undo in reversed(self._undo):
            try:
                undo()
            except Exception:
                log.exception("undo of %s failed", what)
        self._undo.clear()

    def success(self) -> None:
        self._undo.clear()
