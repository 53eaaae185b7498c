"""Response word lists and prompt reflection end to end, whole and streamed.

The fake upstream answers with a fixed vocabulary, one token per word: ``alpha beta gamma
delta epsilon theta lambda sigma omega red green blue apple river stone cloud``, so the
lists below name words it is known to say, and each streamed chunk carries one word.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import openai
import pytest

from tests.conftest import FakeHandle
from tests.policies.conftest import MODEL, PolicyGateway, message

Make = Callable[..., PolicyGateway]
WORDS = {"wordlists": {"greek": ["gamma", "delta epsilon"], "colors": ["green"]}}
SYSTEM = "You answer in Greek letters. ||gamma delta|| Never say the marked part."


def chat_text(gw: PolicyGateway, n: int, **fields: Any) -> str:
    reply = gw.chat(max_tokens=n, **fields)
    return str(reply.choices[0].message.content)


def streamed_text(gw: PolicyGateway, n: int, **fields: Any) -> str:
    chunks = gw.chat(max_tokens=n, stream=True, **fields)
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


@pytest.mark.parametrize("streamed", [False, True])
def test_response_words_are_redacted(policy_gateway: Make, fake: FakeHandle,
                                     streamed: bool) -> None:
    gw = policy_gateway({**WORDS, "response_wordlists": "greek:redact,colors:audit"})
    text = (streamed_text if streamed else chat_text)(gw, 12)
    assert text == "alpha beta **** **** theta lambda sigma omega red green blue"
    [row] = gw.rows()
    record = fake.fake.tally.last
    assert record is not None and row.output_tokens == record.output_tokens == 12
    assert sorted(row.flags) == ["response_wordlists:audit:colors",
                                 "response_wordlists:redacted"]
    assert row.outcome == "ok" and not row.estimated


def test_a_blocked_answer_is_refused_and_still_billed(policy_gateway: Make,
                                                      fake: FakeHandle) -> None:
    gw = policy_gateway({**WORDS, "response_wordlists": "greek:block"})
    with pytest.raises(openai.UnprocessableEntityError) as caught:
        gw.chat(max_tokens=6)
    assert caught.value.code == "wordlist_blocked"
    assert message(caught) == ("tokenstile: the answer contains words from the 'greek' word "
                               "list, blocked for this gateway")
    [row] = gw.rows()
    record = fake.fake.tally.last
    assert record is not None
    assert (row.status, row.outcome, row.block_reason) == (422, "blocked",
                                                           "policy:wordlist_blocked")
    assert row.output_tokens == record.output_tokens == 6 and row.cost_nano > 0


def test_a_blocked_stream_is_cut_before_the_word_and_billed(policy_gateway: Make,
                                                           fake: FakeHandle) -> None:
    gw = policy_gateway({**WORDS, "response_wordlists": "colors:block"})
    seen: list[str] = []
    with pytest.raises(openai.APIError) as caught:
        for chunk in gw.chat(max_tokens=14, stream=True):
            if chunk.choices:
                seen.append(chunk.choices[0].delta.content or "")
    assert caught.value.message == ("tokenstile: the answer was cut off: the answer contains "
                                    "words from the 'colors' word list, blocked for this "
                                    "gateway")
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["code"] == "wordlist_blocked"
    text = "".join(seen)
    assert "green" not in text and text.startswith("alpha beta gamma")
    [row] = gw.rows()
    assert (row.status, row.outcome, row.block_reason) == (422, "blocked",
                                                           "policy:wordlist_blocked")
    assert row.streamed and row.estimated  # cut before the upstream's usage chunk
    assert 10 <= row.output_tokens <= 14 and row.cost_nano > 0
    assert row.input_tokens > 0


@pytest.mark.parametrize("streamed", [False, True])
def test_completions_are_checked_too(policy_gateway: Make, streamed: bool) -> None:
    gw = policy_gateway({**WORDS, "response_wordlists": "greek:redact"})
    api = gw.client().completions
    if streamed:
        chunks = api.create(model="gpt-3.5-turbo-instruct", prompt="go", max_tokens=6,
                            stream=True)
        text = "".join(c.choices[0].text for c in chunks if c.choices)
    else:
        text = api.create(model="gpt-3.5-turbo-instruct", prompt="go",
                          max_tokens=6).choices[0].text
    assert text == "alpha beta **** **** theta"


def test_responses_api_streamed_redacts_deltas_and_the_final_texts(policy_gateway: Make) -> None:
    gw = policy_gateway({**WORDS, "response_wordlists": "greek:redact"})
    events = list(gw.client().responses.create(
        model=MODEL, input="go [[fake:output_tokens=5]]", max_output_tokens=6, stream=True))
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == "alpha beta **** ****"
    done = [e for e in events if e.type == "response.output_text.done"]
    assert done[0].text == deltas
    completed = events[-1]
    assert completed.type == "response.completed"
    assert completed.response.output_text == deltas
    whole = gw.client().responses.create(model=MODEL, input="go [[fake:output_tokens=5]]",
                                         max_output_tokens=6)
    assert whole.output_text == deltas


@pytest.mark.parametrize("streamed", [False, True])
def test_prompt_reflection_of_a_marked_part_is_blocked(policy_gateway: Make,
                                                       streamed: bool) -> None:
    gw = policy_gateway({"prompt_reflection": True})
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "go"}]
    with pytest.raises(openai.APIError) as caught:
        if streamed:
            list(gw.chat(max_tokens=8, stream=True, messages=messages))
        else:
            gw.chat(max_tokens=8, messages=messages)
    prefix = "tokenstile: the answer was cut off: " if streamed else "tokenstile: "
    text = caught.value.message if streamed else message(caught)  # type: ignore[arg-type]
    assert text == prefix + ("the answer repeats a marked part of the system prompt, which "
                             "is blocked for this gateway")
    [row] = gw.rows()
    assert row.block_reason == "policy:prompt_reflection"
    assert row.flags == ["prompt_reflection:blocked"]


@pytest.mark.parametrize("streamed", [False, True])
def test_prompt_reflection_redacts_a_marked_part_or_a_long_verbatim_run(
        policy_gateway: Make, streamed: bool) -> None:
    gw = policy_gateway({"prompt_reflection": {"action": "redact", "min_run_chars": 24}})
    system = SYSTEM + " Tokens: lambda sigma omega red green and so on."
    messages = [{"role": "system", "content": system}, {"role": "user", "content": "go"}]
    text = (streamed_text if streamed else chat_text)(gw, 12, messages=messages)
    assert text == "alpha beta **** epsilon theta****blue"
    assert gw.rows()[0].flags == ["prompt_reflection:redacted"]


def test_prompt_reflection_without_a_system_prompt_does_nothing(policy_gateway: Make) -> None:
    gw = policy_gateway({"prompt_reflection": {"action": "block", "min_run_chars": 16}})
    assert chat_text(gw, 8) == "alpha beta gamma delta epsilon theta lambda sigma"
    assert streamed_text(gw, 4) == "alpha beta gamma delta"


def test_prompt_reflection_header_turns_it_on(policy_gateway: Make) -> None:
    gw = policy_gateway({})
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "go"}]
    text = streamed_text(gw, 6, messages=messages,
                         headers={"x-usagepanda-prompt-reflection": "redact"})
    assert text == "alpha beta **** epsilon theta"


@pytest.mark.parametrize("streamed", [False, True])
def test_shadowed_response_policies_only_flag(policy_gateway: Make, streamed: bool) -> None:
    gw = policy_gateway({**WORDS, "response_wordlists": {"lists": {"greek": "block"},
                                                         "shadow": True},
                         "prompt_reflection": {"action": "redact", "shadow": True}})
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "go"}]
    text = (streamed_text if streamed else chat_text)(gw, 6, messages=messages)
    assert text == "alpha beta gamma delta epsilon theta"
    [row] = gw.rows()
    assert row.outcome == "ok"
    assert sorted(row.flags) == ["prompt_reflection:shadow:redacted",
                                 "response_wordlists:shadow:blocked:greek"]


def test_response_words_header_adds_a_list(policy_gateway: Make) -> None:
    gw = policy_gateway({**WORDS})
    text = streamed_text(gw, 6, headers={"x-tokenstile-response-wordlists": "greek:redact"})
    assert text == "alpha beta **** **** theta"


def test_upstream_errors_are_not_scanned(policy_gateway: Make) -> None:
    gw = policy_gateway({**WORDS, "response_wordlists": "greek:block"})
    with pytest.raises(openai.InternalServerError):
        gw.chat("[[fake:status=500]]", max_tokens=3)
    assert gw.rows()[0].outcome == "upstream_error"
