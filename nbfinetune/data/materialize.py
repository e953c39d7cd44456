"""In-memory data (pandas DataFrame, datasets.Dataset / DatasetDict, list of dicts) → a JSONL file.

A run's config must be plain JSON (it crosses process and machine boundaries), so objects from the
notebook are written once to $NBFINETUNE_HOME/datasets/<content hash>.jsonl and referred to by path.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from ..config import nbfinetune_home

EVAL_SPLITS = ("validation", "eval", "test")


def materialize(data: Any, eval_data: Any = None) -> tuple[Any, Any]:
    """(data, eval_data) with in-memory objects replaced by file paths; strings pass through."""
    if _is_dataset_dict(data):
        splits = dict(data)
        if "train" not in splits:
            raise ValueError(f"the DatasetDict has no 'train' split (splits: {', '.join(splits)})")
        if eval_data is None:
            eval_data = next((splits[s] for s in EVAL_SPLITS if s in splits), None)
        data = splits["train"]
    return _as_path(data), (None if eval_data is None else _as_path(eval_data))


def _is_dataset_dict(data: Any) -> bool:
    return type(data).__name__ in ("DatasetDict", "IterableDatasetDict")


def _records(data: Any) -> list[dict[str, Any]] | None:
    if hasattr(data, "to_dict") and hasattr(data, "columns") and hasattr(data, "iloc"):  # pandas
        return data.to_dict(orient="records")
    if hasattr(data, "features") and hasattr(data, "to_list"):  # datasets.Dataset
        return data.to_list()
    if isinstance(data, list) and all(isinstance(r, dict) for r in data):
        return data
    return None


def _as_path(data: Any) -> Any:
    if isinstance(data, (str, os.PathLike)) or data is None:
        return None if data is None else str(data)
    records = _records(data)
    if records is None:
        raise ValueError(f"data must be a path, a hub id, a pandas DataFrame, a datasets.Dataset or a list "
                         f"of dicts, got {type(data).__name__}")
    text = "".join(json.dumps(r, default=str, ensure_ascii=False) + "\n" for r in records)
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
    path = Path(nbfinetune_home()) / "datasets" / f"{digest}.jsonl"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        # A temporary name of its own per writer, then an atomic rename: two launches of the same rows at
        # once each write a whole file, and a reader only ever sees a complete one.
        handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{digest}.", suffix=".tmp")
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as out:
                out.write(text)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return str(path)
