"""Transcriptions (a form with the audio; by the second or by tokens) and speech (per
character or by tokens; a binary answer), end to end through the ``openai`` SDK: priced on
the ledger row, and refused before they are sent when their worst case does not fit."""

from __future__ import annotations

from typing import Any

import openai
import pytest

from tests.conftest import FakeHandle
from tests.endpoints.conftest import wav
from tokenstile.providers.audio_length import audio_ms, worst_case_ms
from tokenstile.testing._fake_media import _MP3_FRAME
from tokenstile.types import usd_to_nano

WHISPER_PER_S = usd_to_nano("0.36") // 3600  # $0.36 an hour (genai-prices)


def spend(amount: float) -> dict[str, Any]:
    return {"limits": [{"name": "spend", "scope": "project", "unit": "usd", "window": "day",
                        "amount": amount}]}


def test_audio_lengths_are_read_from_wav_and_mp3_headers_else_bounded_by_size() -> None:
    assert audio_ms(wav(3.5)) == (3500, True)
    assert audio_ms(_MP3_FRAME * 250) == (6000, True)  # 250 frames of 24 ms
    assert audio_ms(b"ID3\x03\x00\x00\x00\x00\x00\x10" + bytes(16) + _MP3_FRAME * 10) == \
        (240, True)
    blob = bytes(30_000)
    assert audio_ms(blob) == (worst_case_ms(30_000), False) == (40_000, False)  # 6 kbit/s
    # A WAV header understating its data cannot make the file look shorter.
    short = bytearray(wav(1.0))
    short[40:44] = (100).to_bytes(4, "little")
    assert audio_ms(bytes(short))[0] == 1000


async def test_whisper_is_billed_by_the_seconds_it_reports(in_process: Any,
                                                           fake: FakeHandle) -> None:
    gw = await in_process({})
    client = gw.openai(await gw.key())
    answer = await client.audio.transcriptions.create(
        model="whisper-1", file=("talk.wav", wav(3.4), "audio/wav"), prompt="names: Ada")
    assert answer.text
    seen = fake.fake.tally.last
    assert seen is not None and seen.route == "/v1/audio/transcriptions"
    assert seen.body["prompt"] == "names: Ada" and seen.units == {"audio_ms": 3000}
    [row] = await gw.rows()
    assert row.api == "transcriptions" and row.detail["audio_ms"] == 3000
    assert row.cost_nano == 3 * WHISPER_PER_S and not row.estimated


async def test_whisper_text_answers_are_billed_from_the_wav_header(in_process: Any) -> None:
    gw = await in_process({})
    client = gw.openai(await gw.key())
    text = await client.audio.transcriptions.create(
        model="whisper-1", file=("talk.wav", wav(7.6), "audio/wav"), response_format="text")
    assert isinstance(text, str) and text
    [row] = await gw.rows()
    assert row.detail["audio_ms"] == 8000 and not row.estimated  # to the nearest second
    assert row.cost_nano == 8 * WHISPER_PER_S


async def test_gpt_4o_transcribe_is_billed_by_its_token_usage(in_process: Any) -> None:
    gw = await in_process({})
    client = gw.openai(await gw.key())
    answer = await client.audio.transcriptions.create(
        model="gpt-4o-transcribe", file=("talk.wav", wav(12), "audio/wav"))
    usage = answer.usage
    assert usage is not None and usage.type == "tokens"
    [row] = await gw.rows()
    audio = usage.input_token_details.audio_tokens
    assert (row.input_tokens, row.output_tokens) == (usage.input_tokens, usage.output_tokens)
    assert row.input_audio_tokens == audio == 200
    # audio in at $6/M, text in at $2.50/M, text out at $10/M (genai-prices)
    assert row.cost_nano == audio * 6_000 + (usage.input_tokens - audio) * 2_500 + \
        usage.output_tokens * 10_000


async def test_audio_of_unknown_length_reserves_the_longest_it_could_be(
        in_process: Any, fake: FakeHandle) -> None:
    gw = await in_process(spend(0.01))
    client = gw.openai(await gw.key())
    # 100 kB of Ogg could last 133 s at 6 kbit/s: $0.0134 of whisper, past the budget.
    with pytest.raises(openai.RateLimitError):
        await client.audio.transcriptions.create(
            model="whisper-1", file=("talk.ogg", bytes(100_000), "audio/ogg"))
    assert not fake.fake.tally.records
    # The same budget takes a WAV file whose header says 90 s ($0.009).
    await client.audio.transcriptions.create(
        model="whisper-1", file=("talk.wav", wav(90, rate=8000), "audio/wav"))
    rows = await gw.rows()
    assert [r.outcome for r in rows] == ["blocked", "ok"]
    assert rows[1].cost_nano == 90 * WHISPER_PER_S


async def test_tts_is_billed_per_character_with_the_audio_relayed(in_process: Any,
                                                                  fake: FakeHandle) -> None:
    gw = await in_process({})
    client = gw.openai(await gw.key())
    text = "Hello there, this is a test of the speech endpoint. " * 4
    speech = await client.audio.speech.create(model="tts-1-hd", voice="alloy", input=text)
    audio = speech.content
    assert audio[:2] == b"\xff\xf3" and len(audio) % len(_MP3_FRAME) == 0
    seen = fake.fake.tally.last
    assert seen is not None and seen.units["characters"] == len(text)
    [row] = await gw.rows()
    assert row.api == "speech" and row.detail["characters"] == len(text)
    assert row.cost_nano == len(text) * 30_000 and not row.estimated  # $30 per M chars


async def test_gpt_4o_mini_tts_is_estimated_from_the_audio_it_returned(in_process: Any) -> None:
    gw = await in_process({})
    client = gw.openai(await gw.key())
    text = "x" * 150  # ten seconds at the fake's 15 characters a second
    speech = await client.audio.speech.create(model="gpt-4o-mini-tts", voice="alloy",
                                              input=text, response_format="wav")
    assert speech.content[:4] == b"RIFF"
    [row] = await gw.rows()
    assert row.estimated and row.output_audio_tokens == row.output_tokens == 250  # 25/s
    assert row.cost_nano == row.input_tokens * 600 + 250 * 12_000  # $0.60/M in, $12/M out


async def test_speech_past_the_budget_is_refused_before_it_is_sent(
        in_process: Any, fake: FakeHandle) -> None:
    gw = await in_process(spend(0.01))
    client = gw.openai(await gw.key())
    with pytest.raises(openai.RateLimitError):  # 1,000 characters of tts-1-hd: $0.03
        await client.audio.speech.create(model="tts-1-hd", voice="alloy", input="y" * 1000)
    assert not fake.fake.tally.records
    await client.audio.speech.create(model="tts-1", voice="alloy", input="y" * 600)
    rows = await gw.rows()
    assert [(r.outcome, r.cost_nano) for r in rows] == [("blocked", 0), ("ok", 9_000_000)]
