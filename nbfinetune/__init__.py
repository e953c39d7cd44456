"""nbfinetune: LoRA fine-tuning from inside a Jupyter notebook.

    %load_ext nbfinetune
    run = %finetune --data sample:people --steps 40
    %chat Extract the name, age and city: "Ada, 36, lives in Turin."

or from Python: `import nbfinetune as nbft; run = nbft.finetune(data=..., steps=...)`.

Importing this package is instant: torch, transformers, modal and plotly load only when used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["RunConfig", "Run", "attach", "compare", "delete", "finetune", "preflight", "runs", "sweep", "load_ipython_extension"]

if TYPE_CHECKING:
    from .api import Run, attach, compare, delete, finetune, preflight, runs, sweep
    from .config import RunConfig

_LAZY = {"Run": "api", "attach": "api", "compare": "api", "delete": "api", "finetune": "api", "preflight": "api", "runs": "api", "sweep": "api", "RunConfig": "config"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'nbfinetune' has no attribute {name!r}")


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    return [{"module": "nbfinetune.server"}]


def _jupyter_labextension_paths() -> list[dict[str, str]]:
    return [{"src": "labextension", "dest": "nbfinetune"}]


def load_ipython_extension(ipython: Any) -> None:
    from .magics import FinetuneMagics

    ipython.register_magics(FinetuneMagics)
