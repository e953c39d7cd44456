"""Evaluate runs, base models and API endpoints on your eval set; judge with an LLM; see when a fine-tune
pays."""

from __future__ import annotations

from .economics import Assumptions, economics
from .evaluate import evaluate
from .judge import Judge, judge

__all__ = ["Assumptions", "Judge", "economics", "evaluate", "judge"]
