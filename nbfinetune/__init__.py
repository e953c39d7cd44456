"""nbfinetune: LoRA fine-tuning from inside a Jupyter notebook.

    %load_ext nbfinetune
    run = %finetune --data sample:people --steps 40
    %chat Extract the name, age and city: "Ada, 36, lives in Turin."

or from Python: `import nbfinetune as nbft; run = nbft.finetune(data=..., steps=...)`.

Importing this package is instant: torch, transformers, modal and plotly load only when used.
"""

from __future__ import annotations

import sys
import types
from typing import TYPE_CHECKING, Any

from ._version import __version__ as __version__

__all__ = ["RunConfig", "Run", "attach", "compare", "delete", "economics", "endpoint", "evaluate", "finetune",
           "judge", "launcher", "preflight", "runs", "serve", "sweep", "try_rewards",
           "load_ipython_extension"]

if TYPE_CHECKING:
    from .api import (
        Run,
        attach,
        compare,
        delete,
        endpoint,
        finetune,
        launcher,
        preflight,
        runs,
        serve,
        try_rewards,
    )
    from .config import RunConfig

    # From the submodules: `evals.economics` (and the others) name both a module and its function.
    from .evals.economics import economics
    from .evals.evaluate import evaluate
    from .evals.judge import judge
    from .sweep import sweep

_LAZY = {"Run": "api", "attach": "api", "compare": "api", "delete": "api", "finetune": "api",
         "preflight": "api", "runs": "api", "sweep": "sweep", "RunConfig": "config",
         "launcher": "api", "evaluate": "evals", "judge": "evals", "economics": "evals",
         "endpoint": "api", "serve": "api", "try_rewards": "api"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'nbfinetune' has no attribute {name!r}")


class _Package(types.ModuleType):
    """`nbfinetune.runs` and `nbfinetune.sweep` are both a submodule and a function: importing the submodule
    sets the package attribute, which would otherwise shadow the function (`nbft.runs()` → "module is not
    callable")."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name in ("runs", "sweep") and isinstance(value, types.ModuleType):
            value.__class__ = _CallableModule
        super().__setattr__(name, value)


class _CallableModule(types.ModuleType):
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        import importlib

        name = self.__name__.rpartition(".")[2]
        return getattr(importlib.import_module(f".{_LAZY[name]}", __package__), name)(*args, **kwargs)


sys.modules[__name__].__class__ = _Package


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    return [{"module": "nbfinetune.server_extension"}]


def _jupyter_labextension_paths() -> list[dict[str, str]]:
    return [{"src": "labextension", "dest": "nbfinetune"}]


def load_ipython_extension(ipython: Any) -> None:
    from .magics import FinetuneMagics, register_transformers

    ipython.register_magics(FinetuneMagics)
    register_transformers(ipython)
