"""Streamed image, transcription and speech answers through the ``openai`` SDK: relayed
event by event, billed from their final events' usage, and at the reserved worst case when
the stream breaks off before it."""

from __future__ import annotations

from typing import Any

import openai
import orjson
import pytest

from tests.conftest import FakeHandle
from tests.endpoints.conftest import wav


async def test_a_streamed_image_is_billed_from_its_completed_event(in_process: Any) -> None:
    gw = await in_process({})
    client = gw.openai(await gw.key())
    stream = await client.images.generate(model="gpt-image-1", prompt="a kite", stream=True,
                                          partial_images=2, quality="low", size="1024x1024")
    kinds = [event.type async for event in stream]
    assert kinds == ["image_generation.partial_image"] * 2 + ["image_generation.completed"]
    [row] = await gw.rows()
    assert row.streamed and not row.estimated and row.detail["images"] == 1
    assert row.output_tokens == 272 + 2 * 100  # partial images are billed as output
    assert row.cost_nano == row.input_tokens * 5_000 + row.output_tokens * 40_000


async def test_a_streamed_transcription_is_billed_from_its_done_event(in_process: Any) -> None:
    gw = await in_process({})
    client = gw.openai(await gw.key())
    stream = await client.audio.transcriptions.create(
        model="gpt-4o-mini-transcribe", file=("a.wav", wav(6), "audio/wav"), stream=True)
    events = [event async for event in stream]
    done = events[-1]
    assert done.type == "transcript.text.done" and done.usage is not None
    [row] = await gw.rows()
    assert (row.input_tokens, row.output_tokens) == (done.usage.input_tokens,
                                                     done.usage.output_tokens)
    assert row.input_audio_tokens == 100 and not row.estimated
    # audio in at $3/M, output at $5/M (genai-prices)
    assert row.cost_nano == 100 * 3_000 + row.output_tokens * 5_000


async def test_streamed_speech_is_billed_from_its_usage(in_process: Any) -> None:
    gw = await in_process({})
    client = gw.openai(await gw.key())
    speech = await client.audio.speech.create(model="gpt-4o-mini-tts", voice="alloy",
                                              input="y" * 300, stream_format="sse")
    events = [orjson.loads(line[6:]) for line in speech.content.splitlines()
              if line.startswith(b"data: ")]
    usage = events[-1]["usage"]
    assert events[0]["type"] == "speech.audio.delta" and events[-1]["type"] == \
        "speech.audio.done"
    [row] = await gw.rows()
    assert (row.input_tokens, row.output_tokens) == (usage["input_tokens"],
                                                     usage["output_tokens"])
    assert row.output_audio_tokens == usage["output_tokens"] == 417 and not row.estimated
    assert row.cost_nano == row.input_tokens * 600 + 417 * 12_000


async def test_a_stream_cut_before_its_usage_is_billed_at_the_worst_case(
        in_process: Any, fake: FakeHandle) -> None:
    gw = await in_process({})
    client = gw.openai(await gw.key())
    with pytest.raises(openai.APIError):
        stream = await client.images.generate(
            model="gpt-image-1", prompt="a kite [[fake:cut_after=1]]", stream=True,
            partial_images=2, quality="low", size="1024x1024")
        async for _ in stream:
            pass
    [row] = await gw.rows()
    assert row.estimated and row.outcome == "upstream_cut"
    assert row.output_tokens == 272  # the output reserved: one low 1024x1024 image
    assert row.cost_nano == row.input_tokens * 5_000 + 272 * 40_000
