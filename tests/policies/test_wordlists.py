"""Word-list matching: literal, ignoring case, on word boundaries, Unicode-aware; and the
same result whether a text arrives whole or in any pieces."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenstile.policies.builtin_lists import BUILTIN_LISTS
from tokenstile.policies.rules import ListSetting, WordCompiler
from tokenstile.policies.scanner import ChannelScanner, Finder, Hit, WordFinder, scan_whole
from tokenstile.policies.wordlists import WordMatcher, merge_ranges, redact


def matches(entries: list[str], text: str) -> list[str]:
    matcher = WordMatcher(dict.fromkeys(entries, "x"))
    return [text[m.start:m.end] for m in matcher.find(text)]


@pytest.mark.parametrize(("entries", "text", "found"), [
    (["damn"], "Damn it, DAMN!", ["Damn", "DAMN"]),
    (["damn"], "damnation and goddamn", []),
    (["ass"], "assert the class passes", []),
    (["c++"], "I write C++ daily, abc++ not", ["C++"]),
    (["a.b"], "aXb is not a.b", ["a.b"]),
    (["(dot)"], "name(dot)com and (dot) alone", ["(dot)", "(dot)"]),
    (["$$$"], "win $$$ now", ["$$$"]),
    (["x|y"], "x or y, x|y", ["x|y"]),
    ([".*"], "anything at all", []),
    (["[a-z]+"], "letters [a-z]+ here", ["[a-z]+"]),
    (["\\d"], "digits 123 and \\d", ["\\d"]),
    (["project zeus"], "Project   Zeus and project\nzeus and projectzeus", [
        "Project   Zeus", "project\nzeus"]),
    (["café"], "CAFÉ, café, cafe", ["CAFÉ", "café"]),
    (["straße"], "STRASSE und Straße", ["STRASSE", "Straße"]),
    (["strasse"], "die Straße", ["Straße"]),
    (["привет"], "Привет, мир! приветствую", ["Привет"]),
    (["東京"], "私は東京に住む", []),  # no spaces between CJK words: no word boundary
    (["東京"], "東京 is a city", ["東京"]),
    (["naïve"], "so nai\u0308ve, NAÏVE", ["nai\u0308ve", "NAÏVE"]),  # NFD text, NFC entry
    (["nai\u0308ve"], "so naïve", ["naïve"]),  # NFD entry, NFC text
    (["bad"], "ｂａｄ and ＢＡＤ!", ["ｂａｄ", "ＢＡＤ"]),  # full-width letters
    (["ｂａｄ"], "so bad", ["bad"]),
    (["bad"], "b\u200bad, b\u200ca\u200dd, b\u2060ad\ufeff, b\u00adad", [
        "b\u200bad", "b\u200ca\u200dd", "b\u2060ad", "b\u00adad"]),
    (["b\u200bad"], "so bad", ["bad"]),  # invisible characters in an entry too
    (["bad"], "x\u200bbad and bad\u200dx", []),  # still one word each: no boundary
    (["top secret"], "ｔｏｐ\u3000ＳＥＣＲＥＴ", ["ｔｏｐ\u3000ＳＥＣＲＥＴ"]),  # ideographic space
    (["ﬁle"], "a file", ["file"]),  # ligature
    (["cafe"], "café", []),  # an accent is not dropped: another word
    (["fuck", "fucking"], "fucking fuck", ["fucking", "fuck"]),
    (["under_score"], "an under_score and under_scores", ["under_score"]),
])
def test_literal_matching(entries: list[str], text: str, found: list[str]) -> None:
    assert matches(entries, text) == found


def test_a_pathological_entry_is_still_literal_and_fast() -> None:
    entry = "(a+)+$"
    text = "a" * 5000 + "!"
    assert matches([entry], text) == []
    assert matches([entry], "x (a+)+$ y") == ["(a+)+$"]


def test_builtin_lists_match_themselves() -> None:
    for name, words in BUILTIN_LISTS.items():
        matcher = WordMatcher(dict.fromkeys(words, name))
        for word in words:
            assert [m.value for m in matcher.find(f"... {word.upper()} ...")] == [name]


def test_redact_and_merge() -> None:
    assert redact("one two three", [(4, 7)], "***") == "one *** three"
    assert merge_ranges([(0, 3), (2, 5), (5, 6)]) == [(0, 5), (5, 6)]
    assert redact("abcdef", [(0, 3), (2, 5)], "#") == "#f"


def test_one_entry_in_two_lists_takes_the_stricter_action() -> None:
    compiler = WordCompiler({"a": ["alpha", "beta"], "b": ["beta"]})
    rule = compiler.rule("request_wordlists", (ListSetting("a", "audit"),
                                               ListSetting("b", "block")), "****", "key")
    assert rule is not None
    hits = {m.value.label: m.value.action for m in rule.matcher.find("alpha beta")}
    assert hits == {"a": "audit", "a, b": "block"}


def test_shadowed_list_reports_what_it_would_do() -> None:
    compiler = WordCompiler({"a": ["alpha"]})
    rule = compiler.rule("response_wordlists", (ListSetting("a", "block", shadow=True),),
                         "****", "key")
    assert rule is not None
    [match] = rule.matcher.find("alpha")
    assert (match.value.action, match.value.shadow) == (None, "block")


# -- streamed: any split gives the whole-text result --------------------------------------

def stream_through(finders: list[Finder], pieces: list[str]) -> str:
    scanner = ChannelScanner(finders)
    out: dict[int, str] = {}
    for index, piece in enumerate(pieces):
        scanner.push(index, piece)
        out.update(scanner.advance(final=False)[0])
    out.update(scanner.advance(final=True)[0])
    assert not scanner.pending
    return "".join(out[i] for i in range(len(pieces)))


def finders_for(entries: dict[str, str]) -> list[Finder]:
    hits = {word: Hit("response_wordlists", "t", action, mask="[x]")
            for word, action in entries.items()}
    return [WordFinder(WordMatcher(hits))]


def test_a_word_split_across_pieces_is_redacted() -> None:
    finders = finders_for({"forbidden": "redact", "top secret": "redact"})
    pieces = ["this is forb", "id", "den and top", " ", "sec", "ret!"]
    assert stream_through(finders, pieces) == "this is [x] and [x]!"


def test_a_prefix_of_a_longer_word_is_not_redacted_early() -> None:
    finders = finders_for({"ass": "redact"})
    assert stream_through(finders, ["the ass", "ert holds"]) == "the assert holds"
    assert stream_through(finders, ["the ass", " holds"]) == "the [x] holds"


def test_held_back_text_is_released_once_it_cannot_be_part_of_a_match() -> None:
    scanner = ChannelScanner(finders_for({"abc": "redact"}))
    scanner.push(0, "x" * 20)
    assert scanner.advance(final=False)[0] == []
    scanner.push(1, "y" * 20)
    assert scanner.advance(final=False)[0] == [(0, "x" * 20)]  # the last 4 could start "abc"
    assert scanner.advance(final=True)[0] == [(1, "y" * 20)]


words = st.sampled_from(["alpha", "beta", "ab", "a", "b", " ", "  ", ".", "ALPHA", "c++",
                         "alphabet", "é", "beta\n", "top", "secret", "x",
                         # Unicode variants: invisible characters, marks, width, folding
                         "\u200b", "\u200d", "\u00ad", "\u0301", "\u0308", "ａ", "Ｂ",
                         "ß", "SS", "straße", "\u3000", "ﬁ", "\ufdfa"])


@settings(max_examples=300, deadline=None)
@given(st.lists(words, max_size=40), st.data())
def test_streaming_equals_whole_text(parts: list[str], data: st.DataObject) -> None:
    text = "".join(parts)
    finders = finders_for({"alpha": "redact", "c++": "redact", "top secret": "redact",
                           "b": "audit", "ab": "redact", "strasse": "redact", "é": "redact",
                           "ﬁ": "redact"})
    cuts = sorted(data.draw(st.sets(st.integers(0, len(text)), max_size=12)))
    bounds = [0, *cuts, len(text)]
    pieces = [text[a:b] for a, b in itertools.pairwise(bounds)]
    whole, _ = scan_whole(text, finders)
    assert stream_through(finders, pieces) == whole


def test_a_word_hidden_with_invisible_characters_is_redacted_across_pieces() -> None:
    finders = finders_for({"forbidden": "redact", "straße": "redact"})
    # However many invisible characters a word is spread over, none of it leaves early.
    spread = "f" + "\u200b" * 40 + "or\u00adbid\u200dden"
    pieces = ["this is ", *spread, " and STRA", "SSE", "!"]
    assert stream_through(finders, pieces) == "this is [x] and [x]!"
    assert scan_whole("".join(pieces), finders)[0] == "this is [x] and [x]!"


def test_a_mark_arriving_later_changes_the_word() -> None:
    finders = finders_for({"cafe": "redact"})
    assert stream_through(finders, ["a cafe", "\u0301 here"]) == "a cafe\u0301 here"
    assert stream_through(finders, ["a cafe", " here"]) == "a [x] here"
    finders = finders_for({"café": "redact"})
    assert stream_through(finders, ["a cafe", "\u0301", " here"]) == "a [x] here"


def test_the_left_boundary_looks_past_invisible_characters_already_released() -> None:
    finders = finders_for({"bad": "redact"})
    head = "y" * 40 + "x" + "\u200b" * 3  # released before the rest arrives
    pieces = [*head, *" " * 30, "\u200b", "\u200b", "bad", " but bad"]
    assert stream_through(finders, [*pieces[:44], "bad but bad"]) == head + "bad but [x]"
    assert stream_through(finders, pieces) == head + " " * 30 + "\u200b\u200b[x] but [x]"
