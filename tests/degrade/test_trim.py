"""Trimming keeps the system prompt and the newest turns that fit, tool calls with their
results, and truncates the newest turn only when it alone is too long."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from tokenstile.degrade.trim import trim_messages, truncate_text
from tokenstile.providers.generate_content import count_gemini
from tokenstile.tokens import count_chat


def count(messages: list[dict[str, Any]]) -> int:
    return count_chat("gpt-4o", messages)


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict[str, Any]:
    return {"role": "assistant", "content": text}


SYSTEM = {"role": "system", "content": "You are a careful assistant."}


def test_nothing_changes_when_it_fits() -> None:
    messages = [SYSTEM, user("hi")]
    result = trim_messages(messages, 1000, count)
    assert result is not None and result.messages == messages and result.dropped == 0


def test_keeps_system_and_the_newest_turns_that_fit() -> None:
    history = [SYSTEM] + [m for i in range(20) for m in (user(f"question {i} " * 10),
                                                           assistant(f"answer {i} " * 10))]
    history.append(user("the newest question"))
    budget = count([SYSTEM, *history[-5:]])
    result = trim_messages(history, budget, count)
    assert result is not None
    assert result.messages[0] == SYSTEM
    assert result.messages[-1] == user("the newest question")
    assert result.messages[1:] == history[-len(result.messages) + 1:]
    assert count(result.messages) <= budget
    assert result.dropped == len(history) - len(result.messages)
    assert not result.truncated


def test_never_splits_a_tool_call_from_its_results() -> None:
    call = {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function",
         "function": {"name": "lookup", "arguments": '{"q": "' + "x" * 200 + '"}'}},
        {"id": "call_2", "type": "function", "function": {"name": "lookup",
                                                          "arguments": "{}"}}]}
    results = [{"role": "tool", "tool_call_id": "call_1", "content": "r1 " * 50},
               {"role": "tool", "tool_call_id": "call_2", "content": "r2"}]
    history = [SYSTEM, user("old " * 100), call, *results, assistant("done"), user("next")]
    for budget in range(count([SYSTEM, user("next")]), count(history)):
        result = trim_messages(history, budget, count)
        assert result is not None
        kept = result.messages
        has_call = call in kept
        assert has_call == all(r in kept for r in results), budget
        assert kept[1].get("role") != "tool"


def test_anthropic_tool_results_stay_with_their_tool_use() -> None:
    use = {"role": "assistant", "content": [{"type": "tool_use", "id": "tu_1", "name": "f",
                                             "input": {"a": "b" * 100}}]}
    result_turn = {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "tu_1",
                                                "content": "ok"}]}
    history = [user("start " * 50), use, result_turn, assistant("fine"), user("more")]
    budget = count([assistant("fine"), user("more")]) + 2
    result = trim_messages(history, budget, count, must_start_with_user=True)
    assert result is not None
    assert result_turn not in result.messages or use in result.messages
    assert result.messages[0]["role"] == "user"


def test_gemini_function_responses_stay_with_their_calls_and_the_first_turn_is_a_user_one(
        ) -> None:
    def gemini_count(contents: list[dict[str, Any]]) -> int:
        return count_gemini("gemini-2.5-flash", {"contents": contents})

    call = {"role": "model", "parts": [{"functionCall": {"name": "f", "args": {
        "q": "x" * 200}}}]}
    response = {"role": "user", "parts": [{"functionResponse": {"name": "f", "response": {
        "r": "ok"}}}]}
    answer = {"role": "model", "parts": [{"text": "fine"}]}
    history = [{"parts": [{"text": "start " * 50}]}, call, response, answer,
               {"parts": [{"text": "more"}]}]
    for budget in range(gemini_count(history[-1:]), gemini_count(history)):
        result = trim_messages(history, budget, gemini_count, None, must_start_with_user=True)
        assert result is not None, budget
        kept = result.messages
        assert (call in kept) == (response in kept), budget
        assert kept[0] is not answer and kept[0] is not call  # a role-less content is a user's


def test_truncates_the_newest_turn_when_it_alone_is_too_long() -> None:
    long = "word " * 2000
    budget = count([SYSTEM, user("word " * 100)])
    middle = trim_messages([SYSTEM, user("old"), user(long)], budget, count, "middle")
    assert middle is not None and middle.truncated
    text = middle.messages[-1]["content"]
    assert " … " in text and text.startswith("word") and count(middle.messages) <= budget
    start = trim_messages([SYSTEM, user(long)], budget, count, "start")
    assert start is not None and start.messages[-1]["content"].startswith("…")
    assert trim_messages([SYSTEM, user(long)], budget, count, None) is None
    assert trim_messages([SYSTEM, user(long)], count([SYSTEM]) - 1, count) is None


@given(st.text(max_size=300), st.integers(min_value=0, max_value=300))
def test_truncate_text_returns_the_longest_cut_that_fits(text: str, limit: int) -> None:
    cut = truncate_text(text, lambda t: len(t) <= limit, "middle")
    if len(text) <= limit:
        assert cut == text
    elif cut is not None:
        assert len(cut) <= limit


@given(st.lists(st.sampled_from(["user", "assistant"]), min_size=1, max_size=12),
       st.integers(min_value=20, max_value=400))
def test_trimmed_conversations_always_fit_and_end_with_the_newest(roles: list[str],
                                                                  budget: int) -> None:
    history = [SYSTEM] + [{"role": r, "content": f"{r} says {i} " * 5}
                          for i, r in enumerate(roles)]
    result = trim_messages(history, budget, count)
    if result is not None:
        assert count(result.messages) <= budget
        assert result.messages[0] == SYSTEM
        if not result.truncated:
            assert result.messages[-1] == history[-1]
