"""Literal word and phrase matching: ignoring case, on word boundaries, Unicode-aware.

Entries are always escaped (``re.escape``) before they become a pattern, so a word list can
hold ``c++``, ``$$$`` or ``(dot)`` without turning into a regular expression. A boundary is
required on a side only where the entry has a word character at that end; the words of a
phrase may be separated by up to ``MAX_GAP`` whitespace characters, so every match has a
known greatest length (``hold``), which is what lets a stream be checked while held back by
only that many characters.

Both the entries and the text are *folded* before they are compared (``fold``): NFKC
(full-width ``ｂａｄ`` is ``bad``, a decomposed ``é`` is the composed one), case-folded
(``ß`` is ``ss``, so ``STRASSE`` matches ``straße``), and with the invisible characters a
word can be split with left out (zero-width space, non-joiner and joiner, word joiner,
byte-order mark, soft hyphen: ``b\u200bad`` is ``bad``). The text is folded one cluster at a
time (a character and the marks that combine with it), each folded character remembering
the cluster it came from, so a match found in the folded text is reported, and redacted,
as the exact characters of the original text it covers, and word boundaries are judged on
the folded text (``x\u200bbad`` is the one word ``xbad``).
"""

from __future__ import annotations

import re
import unicodedata
from bisect import bisect_left
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Generic, TypeVar

from tokenstile.policies.builtin_lists import BUILTIN_LISTS

T = TypeVar("T")
MAX_GAP = 8
_WORD = re.compile(r"\w")
# Invisible characters that can sit inside a word without showing: left out when folding.
IGNORED = "\u200b\u200c\u200d\u2060\ufeff\u00ad"
_IGNORED_RE = re.compile(f"[{IGNORED}]")
# How far back the start of the last visible cluster is looked for (a longer run of
# invisible characters only makes a left word boundary look like one).
_CONTEXT_LIMIT = 64


def _continues(ch: str) -> bool:
    """Whether ``ch`` belongs to the cluster before it: a combining mark, a conjoining
    Hangul vowel or final, a half-width voicing mark."""
    return unicodedata.category(ch)[0] == "M" or "\u1160" <= ch <= "\u11ff" or \
        ch in "\uff9e\uff9f"


def _plain_class() -> re.Pattern[str]:
    """Runs of characters that fold one for one on their own and never combine with the
    next one: Latin, Greek, Cyrillic and Armenian letters, kana, CJK ideographs, Hangul
    syllables, except the few that fold otherwise. Folded as a run, not cluster by cluster."""
    def simple(ch: str) -> bool:
        folded = ch.casefold()
        return len(folded) == 1 and not _continues(ch) and ch not in IGNORED and \
            unicodedata.normalize("NFKC", ch) == ch and \
            unicodedata.normalize("NFKC", folded) == folded
    ranges: list[tuple[int, int]] = []
    for code in range(0x590):
        if simple(chr(code)):
            if ranges and ranges[-1][1] == code - 1:
                ranges[-1] = (ranges[-1][0], code)
            else:
                ranges.append((code, code))
    ranges += [(0x3001, 0x3029), (0x3041, 0x3096), (0x30A1, 0x30FA), (0x4E00, 0x9FFF),
               (0xAC00, 0xD7A3)]
    body = "".join(re.escape(chr(a)) + ("-" + re.escape(chr(b)) if b > a else "")
                   for a, b in ranges)
    return re.compile(f"[{body}]+")


_PLAIN = _plain_class()


@lru_cache(maxsize=65536)
def _fold_cluster(cluster: str) -> str:
    if _IGNORED_RE.search(cluster):
        cluster = _IGNORED_RE.sub("", cluster)
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", cluster).casefold())


@dataclass(frozen=True, slots=True)
class Folded:
    """A text folded for matching: ``text``, and for each of its characters the original
    cluster it came from (``starts``/``ends``; None when every position is unchanged).
    ``stable`` folded characters are final: only the last cluster (which marks still to
    come could change) is after them."""

    text: str
    starts: list[int] | None
    ends: list[int] | None
    stable: int
    length: int

    def index(self, pos: int) -> int:
        """The first folded character whose cluster starts at or after original ``pos``."""
        return pos if self.starts is None else bisect_left(self.starts, pos)

    def origin(self, at: int) -> int:
        """Where the cluster of folded character ``at`` starts in the original text."""
        if self.starts is None:
            return min(at, self.length)
        return self.starts[at] if at < len(self.starts) else self.length

    def span(self, start: int, end: int) -> tuple[int, int]:
        """The original characters folded characters ``start:end`` came from."""
        if self.starts is None or self.ends is None:
            return start, end
        return self.starts[start], self.ends[end - 1]


def _last_cluster(text: str) -> int:
    at = len(text) - 1
    while at > 0 and _continues(text[at]):
        at -= 1
    return max(at, 0)


def fold(text: str) -> Folded:
    """``text`` folded (see the module's description), with its map back to ``text``."""
    if text.isascii():
        return Folded(text.lower(), None, None, max(len(text) - 1, 0), len(text))
    if not _IGNORED_RE.search(text) and unicodedata.is_normalized("NFKC", text):
        folded = text.casefold()
        # Case folding never shortens a character: the same length means one for one.
        if len(folded) == len(text) and unicodedata.is_normalized("NFKC", folded):
            return Folded(folded, None, None, _last_cluster(text), len(text))
    out: list[str] = []
    starts: list[int] = []
    ends: list[int] = []
    size = len(text)
    at = 0
    stable = 0
    while at < size:
        run = _PLAIN.match(text, at)
        if run is not None:
            end = run.end()
            if end < size and _continues(text[end]):
                end -= 1  # its last character starts a cluster
            if end > at:
                out.append(text[at:end].casefold())
                starts.extend(range(at, end))
                ends.extend(range(at + 1, end + 1))
                stable = len(starts) - 1
                at = end
                continue
        end = at + 1
        while end < size and _continues(text[end]):
            end += 1
        cluster = text[at:end]
        piece = cluster.lower() if cluster.isascii() else _fold_cluster(cluster)
        stable = len(starts)
        if piece:
            out.append(piece)
            starts.extend([at] * len(piece))
            ends.extend([end] * len(piece))
        at = end
    return Folded("".join(out), starts, ends, stable, size)


def context_start(text: str) -> int:
    """Where the last cluster with something visible in it starts (what the next text's
    left word boundary depends on), looking back at most a few dozen characters."""
    floor = max(0, len(text) - _CONTEXT_LIMIT)
    end = len(text)
    while end > floor:
        start = end - 1
        while start > floor and _continues(text[start]):
            start -= 1
        if _fold_cluster(text[start:end]):
            return start
        end = start
    return floor


def normalize(text: str) -> str:
    """The form two spellings of one entry share: folded, single spaces."""
    return " ".join(fold(text).text.split())


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


def _trie_pattern(entries: list[str]) -> str:
    """One pattern for all entries, shaped as a trie so each position is tried once rather
    than once per entry; at every branch the longer continuation is tried first."""
    root: dict[str, Any] = {}
    for entry in entries:
        node = root
        for atom in _atoms(entry):
            node = node.setdefault(atom, {})
        node[""] = bool(_WORD.match(entry[-1]))  # "" marks an end; True: needs a boundary

    def render(node: dict[str, Any]) -> str:
        alts = [atom + render(child) for atom, child in node.items() if atom]
        if "" in node:
            alts.append(r"(?!\w)" if node[""] else "")
        return alts[0] if len(alts) == 1 else "(?:" + "|".join(alts) + ")"

    return render(root)


def _compile(entries: list[str]) -> re.Pattern[str] | None:
    """The folded entries as one pattern, matched against folded text."""
    worded = [e for e in entries if _WORD.match(e[0])]
    other = [e for e in entries if not _WORD.match(e[0])]
    parts = ([r"(?<!\w)" + _trie_pattern(worded)] if worded else []) + (
        [_trie_pattern(other)] if other else [])
    if not parts:
        return None
    return re.compile("|".join(parts))


@dataclass(frozen=True, slots=True)
class Match(Generic[T]):
    start: int  # in the original text
    end: int
    value: T
    at: int = 0  # where it starts in the folded text


class WordMatcher(Generic[T]):
    """Finds any of ``entries`` (text → the value reported with a match) in a text."""

    __slots__ = ("_by_key", "_regex", "hold")

    def __init__(self, entries: Mapping[str, T]) -> None:
        self._by_key: dict[str, T] = {}
        for entry, value in entries.items():
            key = normalize(entry)
            if key and key not in self._by_key:
                self._by_key[key] = value
        self.hold = max((_longest(e) for e in self._by_key), default=0)
        self._regex = _compile(list(self._by_key))

    def __bool__(self) -> bool:
        return self._regex is not None

    def find(self, text: str, pos: int = 0) -> list[Match[T]]:
        """Every non-overlapping match at or after ``pos`` (characters before ``pos`` still
        count as the left boundary)."""
        return self.scan(fold(text), pos)

    def scan(self, folded: Folded, pos: int = 0) -> list[Match[T]]:
        """``find`` on a text already folded."""
        if self._regex is None:
            return []
        out: list[Match[T]] = []
        text = folded.text
        for m in self._regex.finditer(text, folded.index(pos)):
            start, end = folded.span(m.start(), m.end())
            value = self._by_key[" ".join(text[m.start():m.end()].split())]
            out.append(Match(start, end, value, m.start()))
        return out


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
