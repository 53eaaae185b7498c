"""Checking text that arrives in pieces: find, redact or stop, across piece boundaries.

A ``Finder`` reports spans of a text and whether each is settled: a span is settled when
no text still to come could change it (a longer phrase, a word that goes on, a verbatim
run that grows), and where the text that could still become part of a span begins
(``keep_from``: for a word list, the last ``hold`` folded characters, however many
invisible characters they are spread over). The ``ChannelScanner`` keeps back that tail
and every unsettled span, and releases the rest, redacted, piece by piece. Fed the same
text in any pieces, it gives exactly what ``scan_whole`` gives for the whole text at once.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Protocol

from tokenstile.policies.wordlists import Folded, WordMatcher, context_start, fold, merge_ranges

# Text gathered beyond the held-back window before it is checked and released: a few
# tokens of extra delay, a few times fewer checks.
_BATCH = 24


@dataclass(frozen=True, slots=True)
class Hit:
    """What a span is: which policy found it, what it does now, what shadow mode would do."""

    policy: str
    label: str
    action: str | None  # audit | redact | block, or None when only a shadowed setting matched
    shadow: str | None = None
    mask: str = "****"


@dataclass(frozen=True, slots=True)
class Span:
    start: int
    end: int
    settled: bool
    hit: Hit


class Finder(Protocol):
    hold: int

    def find(self, text: str, pos: int, final: bool) -> list[Span]:
        """Spans starting at or after ``pos``; ``final`` says no more text will come."""
        ...

    def keep_from(self, text: str) -> int:
        """Where the part of ``text`` that more text could still make a span of begins."""
        ...


class WordFinder:
    """Word-list matches; a match is settled once no longer entry could start there, and
    the character after it (which decides its boundary) is known, all in folded text."""

    __slots__ = ("_folded", "_text", "hold", "matcher")

    def __init__(self, matcher: WordMatcher[Hit]) -> None:
        self.matcher = matcher
        self.hold = matcher.hold + 1  # the character after a match decides its boundary
        self._text: str | None = None
        self._folded: Folded | None = None

    def _fold(self, text: str) -> Folded:
        if self._folded is None or text is not self._text:  # find, then keep_from: fold once
            self._text, self._folded = text, fold(text)
        return self._folded

    def find(self, text: str, pos: int, final: bool) -> list[Span]:
        folded = self._fold(text)
        limit = folded.stable - self.matcher.hold
        return [Span(m.start, m.end, final or m.at < limit, m.value)
                for m in self.matcher.scan(folded, pos)]

    def keep_from(self, text: str) -> int:
        folded = self._fold(text)
        return folded.origin(max(0, folded.stable - self.matcher.hold))


def redaction_ranges(spans: list[Span]) -> list[tuple[int, int]]:
    return [(s.start, s.end) for s in spans if s.hit.action == "redact"]


def scan_whole(text: str, finders: list[Finder]) -> tuple[str, list[Span]]:
    """The text redacted, and every span found in it."""
    spans = [span for finder in finders for span in finder.find(text, 0, True)]
    ranges = redaction_ranges(spans)
    if not ranges:
        return text, spans
    return _rewrite(text, 0, len(text), merge_ranges(ranges), _mask_for(spans)), spans


def _mask_for(spans: list[Span]) -> dict[int, str]:
    return {s.start: s.hit.mask for s in spans if s.hit.action == "redact"}


def _rewrite(text: str, lo: int, hi: int, ranges: list[tuple[int, int]],
             masks: dict[int, str]) -> str:
    """``text[lo:hi]`` with every range dropped and a mask written where a range starts
    (a range starting before zero continues one masked earlier: nothing is written)."""
    out: list[str] = []
    at = lo
    for start, end in ranges:
        if end <= lo or start >= hi:
            continue
        if start > at:
            out.append(text[at:start])
        if start >= lo:
            out.append(masks.get(start, "****"))
        at = max(at, min(end, hi))
    if at < hi:
        out.append(text[at:hi])
    return "".join(out)


class ChannelScanner:
    """One stream of text (one choice, one output part), fed in numbered pieces."""

    __slots__ = (
        "_base",
        "_buf",
        "_context",
        "_drop",
        "_finders",
        "_hold",
        "_reported",
        "_resume",
        "_segments",
    )

    def __init__(self, finders: list[Finder]) -> None:
        self._finders = finders
        self._hold = max((f.hold for f in finders), default=0)
        self._segments: deque[tuple[int, int]] = deque()  # (piece id, length)
        self._buf = ""
        self._base = 0  # absolute offset of _buf[0]
        self._context = ""
        self._drop = 0  # leading characters of _buf already covered by a mask
        self._resume = [0] * len(finders)
        self._reported: set[tuple[int, int, int]] = set()

    @property
    def pending(self) -> bool:
        return bool(self._segments)

    def push(self, piece: int, text: str) -> None:
        self._segments.append((piece, len(text)))
        self._buf += text

    def advance(self, final: bool) -> tuple[list[tuple[int, str]], list[Span]]:
        """Release what can be released: ``(piece id, text to send)`` in order, and the
        spans settled for the first time (positions relative to this call's buffer)."""
        buf = self._buf
        if not final and len(buf) <= self._hold + _BATCH:  # too little to be worth a look
            released, _ = self._boundary(0)
            return [(piece, "") for piece, _ in released], []
        ctx = self._context
        text = ctx + buf
        off = len(ctx)
        found: list[tuple[int, Span]] = []
        for index, finder in enumerate(self._finders):
            for span in finder.find(text, off + self._resume[index], final):
                found.append((index, Span(span.start - off, span.end - off, span.settled,
                                          span.hit)))
        cut = len(buf) if final else min((f.keep_from(text) for f in self._finders),
                                             default=len(text)) - off
        fresh: list[Span] = []
        for index, span in found:
            if not span.settled:
                cut = min(cut, span.start)
                continue
            key = (index, self._base + span.start, self._base + span.end)
            if key not in self._reported:
                self._reported.add(key)
                fresh.append(span)
        released, boundary = self._boundary(max(cut, 0))
        if not released:
            return [], fresh
        out: list[tuple[int, str]] = []
        at = 0
        if found or self._drop:
            settled = [span for _, span in found if span.settled]
            ranges = redaction_ranges(settled)
            if self._drop:
                ranges.append((-1, self._drop))
            merged = merge_ranges(ranges)
            masks = _mask_for(settled)
            for piece, length in released:
                out.append((piece, _rewrite(buf, at, at + length, merged, masks)))
                at += length
            self._drop = max([0, *(end - boundary for start, end in merged
                                   if start < boundary)])
            for index, span in found:
                if span.settled and span.start < boundary:
                    self._resume[index] = max(self._resume[index], span.end)
        else:
            for piece, length in released:
                out.append((piece, buf[at:at + length]))
                at += length
        self._resume = [max(0, r - boundary) for r in self._resume]
        kept = ctx + buf[:boundary]
        self._context = kept[context_start(kept):]
        self._buf = buf[boundary:]
        self._base += boundary
        if self._reported:
            self._reported = {k for k in self._reported if k[2] > self._base}
        return out, fresh

    def _boundary(self, cut: int) -> tuple[list[tuple[int, int]], int]:
        released: list[tuple[int, int]] = []
        at = 0
        while self._segments and at + self._segments[0][1] <= cut:
            segment = self._segments.popleft()
            released.append(segment)
            at += segment[1]
        return released, at
