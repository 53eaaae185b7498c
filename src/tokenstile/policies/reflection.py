"""Prompt reflection: an answer that gives away the system prompt.

Two checks. The parts of the system prompt written between delimiters (``||like this||``)
are secrets: any of them in the answer (ignoring case, on word boundaries) is a leak. And,
when ``min_run_chars`` is set, any run of that many characters copied verbatim from the
system prompt is a leak, marked or not.
"""

from __future__ import annotations

from functools import lru_cache

from tokenstile.policies.decisions import Block, Decision, Flag, where
from tokenstile.policies.scanner import Finder, Hit, Span, WordFinder
from tokenstile.policies.wordlists import WordMatcher

POLICY = "prompt_reflection"
_MAX_PROMPT_CHARS_FOR_RUNS = 200_000


def marked_parts(system: str, delimiter: str = "||") -> list[str]:
    """The texts between each pair of delimiters, stripped, empty ones left out."""
    parts = system.split(delimiter)
    return [p.strip() for p in parts[1:-1:2] if p.strip()] if len(parts) >= 3 else []


@lru_cache(maxsize=32)
def _grams(system: str, size: int) -> frozenset[str]:
    return frozenset(system[i:i + size] for i in range(len(system) - size + 1))


class RunFinder:
    """Runs of at least ``size`` characters that also occur in the system prompt.

    A run is settled once every window that could still extend it has been seen.
    """

    __slots__ = ("_grams", "_hit", "_size", "hold")

    def __init__(self, system: str, size: int, hit: Hit) -> None:
        self._size = size
        self._grams = _grams(system[:_MAX_PROMPT_CHARS_FOR_RUNS], size)
        self._hit = hit
        self.hold = size - 1

    def find(self, text: str, pos: int, final: bool) -> list[Span]:
        size, grams = self._size, self._grams
        spans: list[Span] = []
        start = end = -1
        for i in range(pos, len(text) - size + 1):
            if text[i:i + size] in grams:
                if start >= 0 and i <= end:
                    end = i + size
                else:
                    if start >= 0:
                        spans.append(self._span(start, end, len(text), final))
                    start, end = i, i + size
        if start >= 0:
            spans.append(self._span(start, end, len(text), final))
        return spans

    def keep_from(self, text: str) -> int:
        return max(0, len(text) - self.hold)

    def _span(self, start: int, end: int, length: int, final: bool) -> Span:
        return Span(start, end, final or end <= length - self._size, self._hit)


def reflection_finders(system: str, action: str | None, shadow: str | None,
                       delimiter: str, min_run_chars: int | None) -> list[Finder]:
    """The finders for one request's system prompt (none when there is nothing to leak)."""
    finders: list[Finder] = []
    parts = marked_parts(system, delimiter)
    if parts:
        hit = Hit(POLICY, "a marked part of the system prompt", action, shadow)
        finders.append(WordFinder(WordMatcher(dict.fromkeys(parts, hit))))
    if min_run_chars and len(system) >= min_run_chars:
        hit = Hit(POLICY, f"{min_run_chars} or more characters of the system prompt verbatim",
                  action, shadow)
        finders.append(RunFinder(system, min_run_chars, hit))
    return finders


def reflection_decisions(spans: list[Span], source: str) -> list[Decision]:
    """Block or audit a leak (redaction is the caller's); shadowed ones are noted."""
    decisions: list[Decision] = []
    blocked = sorted({s.hit.label for s in spans if s.hit.action == "block"})
    if blocked:
        decisions.append(Block(POLICY, "prompt_reflection",
                               f"the answer repeats {' and '.join(blocked)}, which is "
                               f"blocked {where(source)}"))
    if any(s.hit.action == "audit" for s in spans):
        decisions.append(Flag(POLICY, "audit"))
    for action, done in (("block", "blocked"), ("redact", "redacted"), ("audit", "audit")):
        if any(s.hit.shadow == action for s in spans):
            decisions.append(Flag(POLICY, done, True))
    return decisions
