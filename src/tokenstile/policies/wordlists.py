"""Literal word and phrase matching: ignoring case, on word boundaries, Unicode-aware.

Entries are always escaped (``re.escape``) before they become a pattern, so a word list can
hold ``c++``, ``$$$`` or ``(dot)`` without turning into a regular expression. A boundary is
required on a side only where the entry has a word character at that end; the words of a
phrase may be separated by up to ``MAX_GAP`` whitespace characters, so every match has a
known greatest length (``hold``), which is what lets a stream be checked while held back by
only that many characters.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Generic, TypeVar

from tokenstile.policies.builtin_lists import BUILTIN_LISTS

T = TypeVar("T")
MAX_GAP = 8
_WORD = re.compile(r"\w")


def normalize(text: str) -> str:
    """The form two spellings of one entry share: NFC, case-folded, single spaces."""
    return " ".join(unicodedata.normalize("NFC", text).split()).casefold()


def _pattern(entry: str) -> tuple[str, int]:
    words = unicodedata.normalize("NFC", entry).split()
    body = rf"\s{{1,{MAX_GAP}}}".join(re.escape(w) for w in words)
    joined = " ".join(words)
    if _WORD.match(joined[0]):
        body = r"(?<!\w)" + body
    if _WORD.match(joined[-1]):
        body += r"(?!\w)"
    longest = sum(len(w) for w in words) + MAX_GAP * (len(words) - 1)
    return body, longest


@dataclass(frozen=True, slots=True)
class Match(Generic[T]):
    start: int
    end: int
    value: T


class WordMatcher(Generic[T]):
    """Finds any of ``entries`` (text → the value reported with a match) in a text."""

    __slots__ = ("_by_key", "_each", "_regex", "hold")

    def __init__(self, entries: Mapping[str, T]) -> None:
        self._by_key: dict[str, T] = {}
        parts: list[tuple[int, str, str]] = []
        self.hold = 0
        for entry, value in entries.items():
            if not entry.split():
                continue
            key = normalize(entry)
            if key in self._by_key:
                continue
            self._by_key[key] = value
            body, longest = _pattern(entry)
            parts.append((longest, key, body))
            self.hold = max(self.hold, longest)
        parts.sort(key=lambda p: -p[0])  # longest first: "fucking" before "fuck"
        self._regex = re.compile("|".join(p[2] for p in parts), re.IGNORECASE) \
            if parts else None
        self._each = [(re.compile(body, re.IGNORECASE), key) for _, key, body in parts]

    def __bool__(self) -> bool:
        return self._regex is not None

    def find(self, text: str, pos: int = 0) -> list[Match[T]]:
        """Every non-overlapping match at or after ``pos`` (characters before ``pos`` still
        count as the left boundary)."""
        if self._regex is None:
            return []
        return [Match(m.start(), m.end(), self._value(m.group()))
                for m in self._regex.finditer(text, pos)]

    def _value(self, found: str) -> T:
        value = self._by_key.get(normalize(found))
        if value is not None:
            return value
        for regex, key in self._each:  # case folding that changes length: look one by one
            if regex.fullmatch(found):
                return self._by_key[key]
        raise AssertionError(f"matched text {found!r} belongs to no entry")


def list_entries(names: Iterable[str], custom: Mapping[str, Iterable[str]]) -> dict[
        str, tuple[str, ...]]:
    """The entries of each named list, custom lists taking precedence over built-in ones."""
    out: dict[str, tuple[str, ...]] = {}
    for name in names:
        if name in custom:
            out[name] = tuple(custom[name])
        elif name in BUILTIN_LISTS:
            out[name] = BUILTIN_LISTS[name]
        else:
            raise KeyError(f"unknown word list {name!r}")
    return out


def redact(text: str, ranges: Iterable[tuple[int, int]], mask: str) -> str:
    """``text`` with each (start, end) range replaced by ``mask`` (ranges may overlap)."""
    out: list[str] = []
    at = 0
    for start, end in merge_ranges(ranges):
        out.append(text[at:start])
        out.append(mask)
        at = end
    out.append(text[at:])
    return "".join(out)


def merge_ranges(ranges: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """Overlapping ranges joined; touching ones stay apart (each gets its own mask)."""
    merged: list[tuple[int, int]] = []
    for start, end in sorted(ranges):
        if merged and start < merged[-1][1]:
            if end > merged[-1][1]:
                merged[-1] = (merged[-1][0], end)
        else:
            merged.append((start, end))
    return merged
