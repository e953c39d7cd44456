"""Backends: where a run trains (local subprocess, Modal GPUs); `get_backend` picks one by name."""

from .base import Backend


def get_backend(name: str) -> Backend:
    """The backend by name; the Protocol (base.py) never imports its implementations."""
    if name == "local":
        from .local import LocalBackend

        return LocalBackend()
    if name == "modal":
        from .modal_backend import ModalBackend

        return _modal_backend.setdefault("instance", ModalBackend())
    raise ValueError(f"unknown backend {name!r} (available: local, modal)")


# One Modal backend per process: it owns the threads that mirror remote runs into the local store.
_modal_backend: dict[str, Backend] = {}
