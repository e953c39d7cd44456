"""The Backend protocol: every backend launches a run into the RunStore and can cancel it.

Views never talk to a backend directly: they read the run's events from the store.
"""

from __future__ import annotations

from typing import Protocol

from ..config import RunConfig
from ..runs import RunStore


class Backend(Protocol):
    name: str

    def launch(self, config: RunConfig, store: RunStore) -> str:
        """Start the run and return its id; returns as soon as the run is started, not when it ends."""

    def resume(self, run_id: str, store: RunStore) -> None:
        """Continue a stopped run from its latest checkpoint, appending to the same event stream."""

    def cancel(self, run_id: str, store: RunStore, hard: bool = False) -> None:
        """Graceful: the trainer saves adapter + checkpoint, then emits `cancelled`. Hard: kill now."""

    def is_alive(self, run_id: str, store: RunStore) -> bool | None:
        """Whether the run's worker is still running; None when unknown."""

    def usd_per_hour(self, config: RunConfig) -> float | None:
        """What a run with this config costs per hour while it runs; None where nothing is billed.
        Recorded in the run directory at launch (RunStore.record_rate): views compute cost from it."""


def get_backend(name: str) -> Backend:
    if name == "local":
        from .local import LocalBackend

        return LocalBackend()
    if name == "modal":
        from .modal_backend import ModalBackend

        return _modal_backend.setdefault("instance", ModalBackend())
    raise ValueError(f"unknown backend {name!r} (available: local, modal)")


# One Modal backend per process: it owns the threads that mirror remote runs into the local store.
_modal_backend: dict[str, Backend] = {}
