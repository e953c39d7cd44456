"""Chat with a Modal run's adapter through the deployed `Chat` class (modal_app.py), streaming text.

Here, not in serving.py: serving is the engine the Modal container runs (modal_app imports it), so it
must not import the Modal backend back.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any


class RemoteChatModel:
    """A run's adapter served on Modal (scale to zero). Written to the modal 1.6 API; tested against the
    fake control plane in tests/modal_fake, not against real Modal from our machines."""

    def __init__(self, run_id: str) -> None:
        import modal

        from .modal_app import APP_NAME, RUNS_ROOT

        if not remote_adapter_exists(run_id):  # checked before a billed GPU container starts, only to fail
            raise RuntimeError(f"run {run_id} has no adapter on the Modal Volume yet; wait for it to finish "
                               "or cancel it — a cancelled run keeps its adapter")
        self.run_id = run_id
        self.adapter_path = f"{RUNS_ROOT}/{run_id}/adapter"
        self.adapters = ["default"]
        self._chat = modal.Cls.from_name(APP_NAME, "Chat")(run_id=run_id)

    def describe(self) -> str:
        return f"run {self.run_id}'s adapter served on Modal (the training chat template, from the Volume)"

    def add_checkpoint(self, name: str, path: str) -> None:
        raise NotImplementedError("checkpoint comparison is local-only for now")

    def stream(self, messages: list[dict[str, str]], max_new_tokens: int = 256, temperature: float = 0.0,
               top_p: float = 1.0, adapter: str = "default",
               stop: threading.Event | None = None) -> Iterator[str]:
        for chunk in self._chat.generate.remote_gen(messages, max_new_tokens=max_new_tokens,
                                                    temperature=temperature, top_p=top_p, adapter=adapter):
            if stop is not None and stop.is_set():
                return
            yield chunk

    def ask(self, message: str, stream: bool = True, system: str | None = None, **sampling: Any) -> str:
        """One question; with stream=True the answer is printed as it is generated."""
        from ..serving import ask

        return ask(self.stream, message, stream, system, **sampling)


def remote_adapter_exists(run_id: str) -> bool:
    """Whether the run's adapter is committed on the Volume: checked before a chat starts a billed GPU."""
    import modal

    from . import modal_app

    volume = modal.Volume.from_name(modal_app.RUNS_VOLUME, create_if_missing=True)
    try:
        entries = volume.listdir(f"{run_id}/adapter")
        return any(entry.path.endswith("adapter_config.json") for entry in entries)
    except (FileNotFoundError, Exception):  # noqa: BLE001 — modal's NotFoundError: no such directory
        return False
