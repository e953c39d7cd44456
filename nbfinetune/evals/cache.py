"""Answers and judgments kept on disk by the hash of what produced them, so re-running an evaluation
costs nothing: $NBFINETUNE_HOME/evals/cache/<2 hex>/<sha256>.json. Failures are not kept (they are
retried on the next run)."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from ..config import nbfinetune_home


def key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


class Cache:
    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root) if root is not None else Path(nbfinetune_home()) / "evals" / "cache"

    def _path(self, digest: str) -> Path:
        return self.root / digest[:2] / f"{digest}.json"

    def get(self, digest: str) -> dict[str, Any] | None:
        try:
            return json.loads(self._path(digest).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None  # absent, or torn by a crash: computed again

    def put(self, digest: str, value: dict[str, Any]) -> None:
        path = self._path(digest)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Written aside then renamed: concurrent workers never see half a file.
        handle, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            json.dump(value, out, ensure_ascii=False)
        os.replace(tmp, path)
