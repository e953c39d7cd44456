"""Reward functions for GRPO: `reward(prompt, completion, **row) -> float`, and how they reach the worker.

Two ways, both kept in the run's config (so they travel to the local worker and to a Modal container with it):
- a reference `"module:function"` (train.rewards), imported by the worker like a user metric: the module
  must be importable there (installed, or on PYTHONPATH);
- by value (train.reward_code): a function defined in the notebook is serialized with cloudpickle — its
  code, defaults, closure and the notebook globals it uses; modules it uses are re-imported by name — and
  base64-encoded. The worker must run the same Python minor version (local: the same interpreter).

Stdlib only at import time: this module is read by the notebook and the worker alike.
"""

from __future__ import annotations

import base64
import importlib
import json
from collections.abc import Callable
from typing import Any

Reward = Callable[..., float]


def pack(function: Reward) -> tuple[str, str]:
    """(name, base64 cloudpickle) of a notebook-defined reward."""
    import cloudpickle

    if not callable(function):
        raise TypeError(f"a reward must be a function, got {type(function).__name__}")
    module = getattr(function, "__module__", None)
    if module and module != "__main__":
        # Importable by reference would be lighter, but cloudpickle pickles importable functions by name;
        # registering the module makes it ship by value too, so it works where the module is not installed.
        cloudpickle.register_pickle_by_value(importlib.import_module(module))
        try:
            blob = cloudpickle.dumps(function)
        finally:
            cloudpickle.unregister_pickle_by_value(importlib.import_module(module))
    else:
        blob = cloudpickle.dumps(function)
    return getattr(function, "__name__", "reward"), base64.b64encode(blob).decode("ascii")


def split_rewards(rewards: list[Any] | None) -> tuple[list[str], dict[str, str]]:
    """(references, {name: packed}) from a user's mix of 'module:function' strings and callables."""
    references: list[str] = []
    packed: dict[str, str] = {}
    for reward in rewards or []:
        if isinstance(reward, str):
            references.append(reward)
        else:
            name, blob = pack(reward)
            while name in packed:
                name += "_"
            packed[name] = blob
    return references, packed


def load_rewards(references: list[str] | None, packed: dict[str, str] | None) -> list[tuple[str, Reward]]:
    """(name, callable) for every reward of a run, in order: references first, then by-value ones."""
    out: list[tuple[str, Reward]] = []
    for reference in references or []:
        module, _, attribute = reference.partition(":")
        if not attribute:
            raise ValueError(f"reward {reference!r} must be 'module:function'")
        try:
            function = getattr(importlib.import_module(module), attribute)
        except (ImportError, AttributeError) as exc:
            raise ValueError(f"reward {reference!r} cannot be imported here ({exc}); make the module "
                             "importable (PYTHONPATH, an installed package) or pass the function "
                             "itself") from None
        out.append((attribute, function))
    for name, blob in (packed or {}).items():
        import cloudpickle

        try:
            function = cloudpickle.loads(base64.b64decode(blob))
        except Exception as exc:  # noqa: BLE001 — any unpickling failure is the same user problem
            raise ValueError(f"reward {name!r} (sent by value) cannot be loaded here: "
                             f"{type(exc).__name__}: {exc} (same Python version needed; or use a "
                             "'module:function' reference)") from None
        out.append((name, function))
    return out


def score(rewards: list[tuple[str, Reward]], prompt: str, completion: str,
          row: dict[str, Any]) -> dict[str, float]:
    """Every reward's score of one completion; a reward that raises or returns a non-number scores 0."""
    fields = {k: v for k, v in row.items() if k not in ("prompt", "completion")}
    out = {}
    for name, function in rewards:
        try:
            value = float(function(prompt, completion, **fields))
        except Exception:  # noqa: BLE001 — a user reward failing on odd output must not stop the run
            value = 0.0
        out[name] = value if value == value and abs(value) != float("inf") else 0.0
    return out


def people_json(prompt: str, completion: str, answer: str | None = None, **row: Any) -> float:
    """The people task's reward: 0.2 when the completion is JSON, +0.2 with exactly the keys name/age/city,
    +0.2 per right value (against `answer`, the reference JSON): 1.0 for a right answer; half of that for a
    JSON object inside other text."""
    text = completion.strip()
    if text.startswith("```"):
        text = text.strip("`").removeprefix("json").strip()
    scale = 1.0
    try:
        value = json.loads(text)
    except ValueError:
        # A JSON object inside prose earns half: a denser signal, so a base model that rarely answers with
        # bare JSON still gets groups whose completions differ (GRPO learns nothing from equal rewards).
        start, end = text.find("{"), text.rfind("}")
        try:
            value, scale = json.loads(text[start: end + 1]), 0.5
        except ValueError:
            return 0.0
    if not isinstance(value, dict):
        return 0.0
    total = 0.2 + (0.2 if set(value) == {"name", "age", "city"} else 0.0)
    try:
        expected = json.loads(answer) if answer else {}
    except ValueError:
        expected = {}
    if isinstance(expected, dict):
        total += sum(0.2 for key in ("name", "age", "city")
                     if key in expected and value.get(key) == expected[key])
    return round(total * scale, 4)
