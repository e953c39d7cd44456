"""Modal credentials: what launching, deploying and serving check first. A module of its own so that the
training client (modal_backend) and the serving client (modal_serve) share it without importing each other."""

from __future__ import annotations

import os
from typing import Any


class ModalSetupError(RuntimeError):
    """Modal cannot be used as configured; the message says what to do."""


def require_credentials() -> None:
    import modal

    if not _has_credentials(modal.config.config):
        # modal reads ~/.modal.toml once, at import: after `modal token new` in a terminal, read it again
        # so the kernel needs no restart.
        _reread_modal_config()
    if not _has_credentials(modal.config.config):
        raise ModalSetupError("no Modal credentials: run `modal token new` in a terminal (no kernel restart "
                              "needed), or set MODAL_TOKEN_ID and MODAL_TOKEN_SECRET in the environment")


def _has_credentials(config: Any) -> bool:
    # Empty values count as missing (an exported-but-empty MODAL_TOKEN_ID is a common slip).
    return bool(config.get("token_id") and config.get("token_secret"))


def _reread_modal_config() -> None:
    """Re-read the modal config file. Uses modal.config's module state (checked in modal 1.6.4): if that
    changes, this does nothing and the error message still says what to do."""
    import modal.config as modal_config

    reader = getattr(modal_config, "_read_user_config", None)
    if reader is None or not hasattr(modal_config, "_user_config"):
        return
    modal_config.user_config_path = os.environ.get("MODAL_CONFIG_PATH") or os.path.expanduser("~/.modal.toml")
    modal_config._user_config = reader()
    if hasattr(modal_config, "_config_active_profile"):
        modal_config._profile = os.environ.get("MODAL_PROFILE") or modal_config._config_active_profile()
