"""An LLM as judge: a score with a short reason per answer, or a pairwise preference asked twice with
the answers' order swapped (a judge tends to favour the first answer it reads; asking both ways cancels
that). Any OpenAI-compatible endpoint judges — the API model, or our own server in tests.

The judge's calls, tokens and cost are counted on the object (`judge.usage`); verdicts are cached on disk
like answers, so re-running an evaluation asks the judge nothing new."""

from __future__ import annotations

import json
import re
import sys
import threading
from dataclasses import asdict, dataclass, field
from typing import Any

from ..serve.client import EndpointChatModel
from . import cache as cache_
from .models import ask

DEFAULT_RUBRIC = ("Is the answer correct and complete, given the reference answer? Formatting counts if the "
                  "task asks for it.")

_SCORE_PROMPT = """You are grading an answer. Rubric: {rubric}

Question:
{prompt}

Reference answer:
{reference}

Answer to grade:
{answer}

Reply with JSON only: {{"score": <integer 0 to 10>, "reason": "<one short sentence>"}}"""

_PAIR_PROMPT = """You are comparing two answers to the same question. Rubric: {rubric}

Question:
{prompt}

Reference answer:
{reference}

Answer A:
{a}

Answer B:
{b}

Reply with JSON only: {{"winner": "A" | "B" | "tie", "reason": "<one short sentence>"}}"""


@dataclass
class Verdict:
    score: float | None  # score mode: 0..1; pairwise: 1 = the first-named answer wins, 0.5 tie, 0 loses
    reason: str = ""
    error: str | None = None


@dataclass
class JudgeUsage:
    calls: int = 0
    failures: int = 0
    cached: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float | None = 0.0

    def __str__(self) -> str:
        cost = "unknown cost (no prices)" if self.cost_usd is None else f"${self.cost_usd:.4f}"
        return (f"judge: {self.calls} calls + {self.cached} from cache, {self.failures} without a verdict, "
                f"{self.input_tokens:,} input + {self.output_tokens:,} output tokens, {cost}")


def parse_score(text: str) -> tuple[float, str]:
    """'{"score": 7, "reason": "..."}' (also inside prose or a code fence) or 'Score: 7 ...' →
    (0.7, reason)."""
    found = _json_object(text)
    if found is not None and "score" in found:
        value, reason = found["score"], str(found.get("reason", ""))
    else:
        match = re.search(r"score\s*[:=]?\s*\**\s*(-?\d+(?:\.\d+)?)\s*(?:/\s*10)?", text, re.IGNORECASE)
        if not match:
            raise ValueError(f"no score in the judge's reply: {text[:120]!r}")
        value = match.group(1)
        reason = re.sub(r"^[\s.,:;\-–—]+", "", text[match.end():]).strip() or text[:match.start()].strip()
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"the judge's score is not a number: {value!r}") from None
    if not 0 <= number <= 10:
        raise ValueError(f"the judge's score {number:g} is outside 0-10")
    return number / 10, reason[:300]


def parse_winner(text: str) -> tuple[str, str]:
    """'{"winner": "A", ...}' or 'Winner: B' → ('A' | 'B' | 'tie', reason)."""
    found = _json_object(text)
    if found is not None and "winner" in found:
        winner, reason = str(found["winner"]), str(found.get("reason", ""))
    else:
        match = re.search(r"winner\s*[:=]?\s*\**\s*\"?(A|B|tie)\b", text, re.IGNORECASE)
        if not match:
            raise ValueError(f"no winner in the judge's reply: {text[:120]!r}")
        winner, reason = match.group(1), text[match.end():].strip(" .:\n\"*")
    picked = {"a": "A", "b": "B", "tie": "tie"}.get(winner.strip().lower())
    if picked is None:
        raise ValueError(f"the judge's winner must be A, B or tie: {text[:120]!r}")
    return picked, reason[:300]


def _json_object(text: str) -> dict[str, Any] | None:
    for match in re.finditer(r"\{.*?\}", text, re.DOTALL):
        try:
            value = json.loads(match.group(0))
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    return None


@dataclass
class Judge:
    """mode "score": `judge(prediction, reference)` is a metric in [0, 1] (use it in `evaluate`, or in
    training as the metric "judge" — see `from_env`). mode "pairwise": in `evaluate`, each model's answers
    are compared with the baseline model's (the first model unless named) → win rate."""

    endpoint: EndpointChatModel
    rubric: str = DEFAULT_RUBRIC
    mode: str = "score"
    baseline: str | None = None
    max_tokens: int = 160
    name: str = "judge"
    use_cache: bool = True
    usage: JudgeUsage = field(default_factory=JudgeUsage)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        if self.mode not in ("score", "pairwise"):
            raise ValueError(f"judge mode must be 'score' or 'pairwise', got {self.mode!r}")
        if not isinstance(self.endpoint, EndpointChatModel):
            raise TypeError("judge: pass an endpoint, e.g. nbft.endpoint(base_url, model, api_key_env)")

    def _identity(self) -> dict[str, Any]:
        return {"judge": self.endpoint.base_url, "model": self.endpoint.model, "rubric": self.rubric,
                "max_tokens": self.max_tokens}

    def _ask(self, prompt: str) -> tuple[str | None, str | None, bool]:
        """(reply, error, from cache)"""
        store = cache_.Cache()
        digest = cache_.key("judge", self._identity(), prompt)
        kept = store.get(digest) if self.use_cache else None
        if kept is not None:
            with self._lock:
                self.usage.cached += 1
            return kept["reply"], None, True
        try:
            client = self.endpoint._client()
        except RuntimeError as exc:
            return None, str(exc), False
        import os

        answer = ask(client, self.endpoint.model, [{"role": "user", "content": prompt}], self.max_tokens, 0.0,
                     os.environ.get(self.endpoint.api_key_env, ""))
        with self._lock:
            self.usage.calls += 1
            self.usage.input_tokens += answer.input_tokens or 0
            self.usage.output_tokens += answer.output_tokens or 0
            self.usage.cost_usd = _cost(self.endpoint, self.usage)
            if answer.error:
                self.usage.failures += 1
        if answer.error is None and self.use_cache:
            store.put(digest, {"reply": answer.output})
        return answer.output, answer.error, False

    def grade(self, prompt: str, prediction: str, reference: str) -> Verdict:
        reply, error, _ = self._ask(_SCORE_PROMPT.format(rubric=self.rubric, prompt=prompt,
                                                         reference=reference, answer=prediction))
        if error is not None:
            return Verdict(None, error=error)
        try:
            score, reason = parse_score(reply or "")
        except ValueError as exc:
            self._count_failure()
            return Verdict(None, error=str(exc))
        return Verdict(score, reason)

    def compare(self, prompt: str, first: str, second: str, reference: str) -> Verdict:
        """Asked both ways round: 1 when `first` wins both, 0 when it loses both, 0.5 when they disagree
        (position bias) or tie."""
        points, reasons = [], []
        for a, b, first_is in ((first, second, "A"), (second, first, "B")):
            reply, error, _ = self._ask(_PAIR_PROMPT.format(rubric=self.rubric, prompt=prompt,
                                                            reference=reference, a=a, b=b))
            if error is not None:
                return Verdict(None, error=error)
            try:
                winner, reason = parse_winner(reply or "")
            except ValueError as exc:
                self._count_failure()
                return Verdict(None, error=str(exc))
            points.append(0.5 if winner == "tie" else float(winner == first_is))
            reasons.append(reason)
        return Verdict(sum(points) / 2, " / ".join(r for r in reasons if r))

    def _count_failure(self) -> None:
        with self._lock:
            self.usage.failures += 1

    def __call__(self, prediction: str, reference: str) -> float:
        """The metric form used during training, where the prompt is not passed: judged against the
        reference. A failed call scores 0 (and is counted), so training goes on."""
        verdict = self.grade("(see the reference answer)", prediction, reference)
        if verdict.score is None:
            print(f"judge failed: {verdict.error}", file=sys.stderr)
            return 0.0
        return verdict.score

    def __repr__(self) -> str:
        return f"<Judge {self.mode} by {self.endpoint.label}; {self.usage}>"

    def to_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "model": self.endpoint.label, **asdict(self.usage)}

    def usage_counts(self) -> dict[str, Any]:
        """The running totals a training evaluation reads before and after it asks (nbfinetune.metrics
        finds this method by name; a judge used as a 'module:function' metric is counted too)."""
        with self._lock:
            return asdict(self.usage)


def _cost(endpoint: EndpointChatModel, usage: JudgeUsage) -> float | None:
    if endpoint.usd_per_m_input is None or endpoint.usd_per_m_output is None:
        return None
    return (usage.input_tokens * endpoint.usd_per_m_input
            + usage.output_tokens * endpoint.usd_per_m_output) / 1e6


def judge(endpoint: EndpointChatModel, rubric: str = DEFAULT_RUBRIC, mode: str = "score",
          baseline: str | None = None, **options: Any) -> Judge:
    """An LLM judge at `endpoint` (nbft.endpoint(...)): a metric for `evaluate`; mode "pairwise" gives each
    model's win rate against `baseline` (a model label; the first model by default)."""
    return Judge(endpoint, rubric, mode, baseline, **options)


_FROM_ENV: dict[tuple[str, ...], Judge] = {}


class _EnvJudgeMetric:
    """The training metric "judge" (nbfinetune.metrics names it): the 0-1 score of the judge from_env sets up,
    from NBFINETUNE_JUDGE_* variables, which the worker inherits; its usage counted for the eval events."""

    def __call__(self, prediction: str, reference: str) -> float:
        return from_env()(prediction, reference)

    def usage_counts(self) -> dict[str, Any]:
        try:
            return from_env().usage_counts()
        except RuntimeError:  # not set up: the metric itself says so when it is called
            return {}


judge_metric = _EnvJudgeMetric()


def from_env() -> Judge:
    """The judge the training metric "judge" uses: NBFINETUNE_JUDGE_URL, NBFINETUNE_JUDGE_MODEL,
    NBFINETUNE_JUDGE_KEY_ENV (the name of the variable holding the key; default OPENAI_API_KEY),
    NBFINETUNE_JUDGE_RUBRIC, and for its cost NBFINETUNE_JUDGE_USD_PER_M_INPUT / _OUTPUT (USD per million
    tokens) — the worker inherits them from the notebook's environment."""
    import os

    settings = tuple(os.environ.get(f"NBFINETUNE_JUDGE_{name}", "")
                     for name in ("URL", "MODEL", "KEY_ENV", "RUBRIC", "USD_PER_M_INPUT", "USD_PER_M_OUTPUT"))
    url, model, key_env, rubric, per_m_input, per_m_output = settings
    if not url or not model:
        raise RuntimeError("the metric 'judge' needs NBFINETUNE_JUDGE_URL and NBFINETUNE_JUDGE_MODEL set")
    if settings not in _FROM_ENV:  # one judge (and one usage count) per setting, shared by the evaluations
        endpoint = EndpointChatModel(url, model, key_env or "OPENAI_API_KEY", max_retries=3,
                                     usd_per_m_input=_price(per_m_input, "INPUT"),
                                     usd_per_m_output=_price(per_m_output, "OUTPUT"))
        _FROM_ENV[settings] = Judge(endpoint, rubric or DEFAULT_RUBRIC)
    return _FROM_ENV[settings]


def _price(text: str, which: str) -> float | None:
    if not text:
        return None
    try:
        return float(text)
    except ValueError:
        raise RuntimeError(f"NBFINETUNE_JUDGE_USD_PER_M_{which} must be a number, got {text!r}") from None
