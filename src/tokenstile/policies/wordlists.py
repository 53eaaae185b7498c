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
from typing import Any, Generic, TypeVar

from tokenstile.policies.builtin_lists import BUILTIN_LISTS

T = TypeVar("T")
MAX_GAP = 8
_WORD = re.compile(r"\w")


def normalize(text: str) -> str:
    """The form two spellings of one entry share: NFC, case-folded, single spaces."""
    return " ".join(unicodedata.normalize("NFC", text).split()).casefold()


_GAP = rf"\s{{1,{MAX_GAP}}}"


def _atoms(entry: str) -> list[str]:
    """An entry as regex pieces: one per character (escaped), one per gap between words."""
    out: list[str] = []
    for index, word in enumerate(entry.split()):
        if index:
            out.append(_GAP)
        out.extend(re.escape(ch) for ch in word)
    return out


def _longest(entry: str) -> int:
    words = entry.split()
    return sum(len(w) for w in words) + MAX_GAP * (len(words) - 1)


def _trie_pattern(entries: list[str], lower: bool) -> str:
    """One pattern for all entries, shaped as a trie so each position is tried once rather
    than once per entry; at every branch the longer continuation is tried first."""
    root: dict[str, Any] = {}
    for entry in entries:
        node = root
        for atom in _atoms(entry.lower() if lower else entry):
            node = node.setdefault(atom, {})
        node[""] = bool(_WORD.match(entry[-1]))  # "" marks an end; True: needs a boundary

    def render(node: dict[str, Any]) -> str:
        alts = [atom + render(child) for atom, child in node.items() if atom]
        if "" in node:
            alts.append(r"(?!\w)" if node[""] else "")
        return alts[0] if len(alts) == 1 else "(?:" + "|".join(alts) + ")"

    return render(root)


def _compile(entries: list[str], lower: bool) -> re.Pattern[str] | None:
    """The entries as one pattern: matched case-sensitively against lower-cased text
    (``lower``, the fast path), or ignoring case against the text itself."""
    worded = [e for e in entries if _WORD.match(e[0])]
    other = [e for e in entries if not _WORD.match(e[0])]
    parts = ([r"(?<!\w)" + _trie_pattern(worded, lower)] if worded else []) + (
        [_trie_pattern(other, lower)] if other else [])
    if not parts:
        return None
    return re.compile("|".join(parts), 0 if lower else re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Match(Generic[T]):
    start: int
    end: int
    value: T


class WordMatcher(Generic[T]):
    """Finds any of ``entries`` (text → the value reported with a match) in a text."""

    __slots__ = ("_by_key", "_each", "_folding", "_regex", "hold")

    def __init__(self, entries: Mapping[str, T]) -> None:
        self._by_key: dict[str, T] = {}
        spelled: list[str] = []
        for entry, value in entries.items():
            text = " ".join(unicodedata.normalize("NFC", entry).split())
            key = normalize(text)
            if key and key not in self._by_key:
                self._by_key[key] = value
                spelled.append(text)
        self.hold = max((_longest(e) for e in spelled), default=0)
        self._regex = _compile(spelled, lower=True)
        self._folding = _compile(spelled, lower=False)
        self._each = [(re.compile("".join(_atoms(e)), re.IGNORECASE), normalize(e))
                      for e in spelled]

    def __bool__(self) -> bool:
        return self._regex is not None

    def find(self, text: str, pos: int = 0) -> list[Match[T]]:
        """Every non-overlapping match at or after ``pos`` (characters before ``pos`` still
        count as the left boundary)."""
        if self._regex is None or self._folding is None:
            return []
        lowered = text.lower()
        if len(lowered) == len(text):  # lower-casing only ever lengthens: same positions
            found = self._regex.finditer(lowered, pos)
        else:
            found = self._folding.finditer(text, pos)
        return [Match(m.start(), m.end(), self._value(text[m.start():m.end()]))
                for m in found]

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
