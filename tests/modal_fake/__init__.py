"""A local fake of Modal's control plane (gRPC + blob HTTP), so tests drive the real `modal` client."""

from .server import FakeModal, fake_modal

__all__ = ["FakeModal", "fake_modal"]
