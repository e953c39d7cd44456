"""The Backend protocol: every backend launches a run into the RunStore and can cancel it.

Views never talk to a backend directly: they read the run's events from the store.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from ..config import RunConfig
from ..runs import RunStore, RunSummary

if TYPE_CHECKING:
    from ..serving import ChatSource


class RunLike(Protocol):
    """What a backend needs of a run handle (api.Run is one; backends may not import the API layer)."""

    id: str

    @property
    def config(self) -> RunConfig: ...

    def summary(self) -> RunSummary: ...


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

    # --- what differs between backends: shared code asks these, never which backend it has -------
    max_concurrent_runs: int | None
    """How many runs of a sweep train at once; None: all of them, the platform fans out (and caps)."""

    serves_in_process: bool
    """Whether `serve` runs the server in this process (host, port and api key apply, and a command line
    must stay up while it serves) rather than deploying it elsewhere."""

    def check_launch(self, config: RunConfig) -> None:
        """Refuse, before anything is created or billed, a run this backend cannot train as configured."""

    def chat_model(self, run: RunLike) -> ChatSource:
        """A model answering with the run's adapter, wherever that adapter lives."""

    def serve(self, runs: list[Any], **options: Any) -> Any:
        """An OpenAI-compatible API over the runs' adapters; returns the server (`.base_url`, `.api_key`)."""

    def remote_adapter_path(self, run_id: str) -> str | None:
        """The run's adapter on the backend's own storage, for a server there to load; None when the
        adapter lives on this machine only."""
