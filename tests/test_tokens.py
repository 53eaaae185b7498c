"""Offline token counting: tokenizer files, model routing, cookbook overheads, estimates."""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import json
import math
import os
import struct
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tokenstile import tokens
from tokenstile.tokens import (
    count_anthropic,
    count_chat,
    count_embedding_input,
    count_prompt,
    count_responses_input,
    count_text,
    encoding_for,
    ensure_offline_encodings,
    is_estimate,
)

SRC = Path(__file__).resolve().parents[1] / "src"
URLS = {
    "cl100k_base": "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken",
    "o200k_base": "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken",
}


def n_tokens(model: str, text: str) -> int:
    return len(encoding_for(model).encode_ordinary(text))


# --- offline encoding files ------------------------------------------------------------------


def test_urls_and_hashes_are_the_ones_tiktoken_uses() -> None:
    spec = importlib.util.find_spec("tiktoken_ext.openai_public")
    assert spec is not None and spec.origin is not None
    source = Path(spec.origin).read_text()
    for name, (url, sha256) in tokens._BPE_FILES.items():
        assert url == URLS[name]
        assert f'"{url}"' in source
        assert sha256 in source


def test_ensure_offline_writes_files_under_tiktoken_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    monkeypatch.setenv("TOKENSTILE_TIKTOKEN_CACHE", str(cache))
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "elsewhere"))
    ensure_offline_encodings()
    assert os.environ["TIKTOKEN_CACHE_DIR"] == str(cache)
    for name, (url, sha256) in tokens._BPE_FILES.items():
        target = cache / hashlib.sha1(url.encode()).hexdigest()
        assert hashlib.sha256(target.read_bytes()).hexdigest() == sha256, name
    assert sorted(p.name for p in cache.iterdir()) == sorted(
        hashlib.sha1(u.encode()).hexdigest() for u in URLS.values()
    )

    mtimes = {p: p.stat().st_mtime_ns for p in cache.iterdir()}
    ensure_offline_encodings()  # idempotent: nothing rewritten
    assert {p: p.stat().st_mtime_ns for p in cache.iterdir()} == mtimes


def test_ensure_offline_repairs_a_corrupt_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TOKENSTILE_TIKTOKEN_CACHE", str(tmp_path))
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    url, sha256 = tokens._BPE_FILES["o200k_base"]
    target = tmp_path / hashlib.sha1(url.encode()).hexdigest()
    target.write_bytes(b"truncated")
    monkeypatch.setattr(tokens, "_prepared_dir", None)
    ensure_offline_encodings()
    assert hashlib.sha256(target.read_bytes()).hexdigest() == sha256
    assert not list(tmp_path.glob("*.tmp"))


def test_ensure_offline_falls_back_when_cache_dir_unusable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("TOKENSTILE_TIKTOKEN_CACHE", str(blocker / "cache"))
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tokens, "_prepared_dir", None)
    ensure_offline_encodings()
    fallback = tmp_path / "tmp" / "tokenstile-tiktoken"
    assert os.environ["TIKTOKEN_CACHE_DIR"] == str(fallback)
    assert len(list(fallback.iterdir())) == 2


NO_NETWORK_SCRIPT = r"""
import socket, sys
def refuse(*args, **kwargs):
    raise OSError("network disabled in this test")
socket.socket.connect = refuse
socket.socket.connect_ex = refuse
socket.create_connection = refuse
socket.getaddrinfo = refuse
try:
    socket.create_connection(("127.0.0.1", 9))
except OSError:
    print("blocked")
sys.path.insert(0, sys.argv[1])
from tokenstile import tokens
print(tokens.count_text("gpt-4o", "hello world"))
print(tokens.count_text("gpt-4", "hello world"))
print(tokens.encoding_for("gpt-4o").name, tokens.encoding_for("gpt-4").name)
"""


def test_counts_work_with_networking_impossible(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "TIKTOKEN_CACHE_DIR"}
    env["TOKENSTILE_TIKTOKEN_CACHE"] = str(tmp_path / "fresh")
    out = subprocess.run(
        [sys.executable, "-c", NO_NETWORK_SCRIPT, str(SRC)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:4] == ["blocked", "2", "2", "o200k_base cl100k_base"]
    assert len(list((tmp_path / "fresh").iterdir())) == 2


# --- model routing ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "encoding"),
    [
        ("gpt-4o", "o200k_base"),
        ("gpt-4o-mini-2024-07-18", "o200k_base"),
        ("gpt-4.1-nano", "o200k_base"),
        ("gpt-4.5-preview", "o200k_base"),
        ("gpt-5", "o200k_base"),
        ("gpt-5.1-codex", "o200k_base"),
        ("o1-mini", "o200k_base"),
        ("o3", "o200k_base"),
        ("o4-mini", "o200k_base"),
        ("chatgpt-4o-latest", "o200k_base"),
        ("omni-moderation-latest", "o200k_base"),
        ("gpt-4", "cl100k_base"),
        ("gpt-4-0613", "cl100k_base"),
        ("gpt-4-turbo", "cl100k_base"),
        ("gpt-3.5-turbo", "cl100k_base"),
        ("gpt-35-turbo", "cl100k_base"),
        ("text-embedding-3-small", "cl100k_base"),
        ("text-embedding-ada-002", "cl100k_base"),
        ("davinci-002", "cl100k_base"),
        ("babbage-002", "cl100k_base"),
        ("openai/gpt-4", "cl100k_base"),
        ("openai/gpt-4o", "o200k_base"),
        ("ft:gpt-3.5-turbo:acme::abc123", "cl100k_base"),
        ("GPT-4-Turbo", "cl100k_base"),
        ("my-azure-gpt4-deployment", "o200k_base"),
        ("claude-sonnet-4-5", "o200k_base"),
        ("", "o200k_base"),
    ],
)
def test_encoding_for(model: str, encoding: str) -> None:
    assert encoding_for(model).name == encoding


def test_encoding_for_is_memoized() -> None:
    assert encoding_for("gpt-4o") is encoding_for("gpt-4o-mini")
    assert tokens._model("gpt-4o") is tokens._model("gpt-4o")


@pytest.mark.parametrize(
    ("model", "estimate"),
    [
        ("gpt-4o", False),
        ("openai/gpt-4.1", False),
        ("o3-mini", False),
        ("text-embedding-3-large", False),
        ("claude-sonnet-4-5", True),
        ("anthropic/claude-3-5-haiku-latest", True),
        ("gemini-2.5-pro", True),
        ("llama-3.1-70b", True),
        ("", True),
    ],
)
def test_is_estimate(model: str, estimate: bool) -> None:
    assert is_estimate(model) is estimate


# --- text -----------------------------------------------------------------------------------


def test_special_token_text_is_ordinary_text() -> None:
    text = "before <|endoftext|> after <|endofprompt|>"
    enc = encoding_for("gpt-4o")
    with pytest.raises(ValueError):
        enc.encode(text)  # what the gateway must never call on untrusted text
    assert count_text("gpt-4o", text) == len(enc.encode_ordinary(text))
    assert count_text("gpt-4o", "<|endoftext|>") > 1


def test_count_text_matches_tiktoken() -> None:
    text = "Tokenization differs: Привет, как дела? 日本語のテキストです。 naïve café 🙂"
    assert count_text("gpt-4o", text) == len(encoding_for("gpt-4o").encode_ordinary(text))
    assert count_text("gpt-4", text) == len(encoding_for("gpt-4").encode_ordinary(text))
    assert count_text("gpt-4", text) != count_text("gpt-4o", text)


def test_claude_counts_are_scaled_and_rounded_up(monkeypatch: pytest.MonkeyPatch) -> None:
    text = "The quick brown fox jumps over the lazy dog. " * 7
    base = n_tokens("gpt-4o", text)
    assert count_text("claude-sonnet-4-5", text) == math.ceil(base * 1.15 - 1e-9)
    assert count_text("claude-sonnet-4-5", text, factor=2.0) == base * 2
    assert count_text("claude-sonnet-4-5", text, factor=1.0) == base
    monkeypatch.setattr(tokens, "CLAUDE_FACTOR", 1.5)
    assert count_text("claude-sonnet-4-5", text) == math.ceil(base * 1.5)
    # Other models without a public tokenizer get o200k, unscaled.
    assert count_text("gemini-2.5-pro", text) == base


def test_count_text_stringifies_and_skips() -> None:
    assert count_text("gpt-4o", None) == 0
    assert count_text("gpt-4o", "") == 0
    assert count_text("gpt-4o", 12345) == n_tokens("gpt-4o", "12345")
    assert count_text("gpt-4o", {"a": [1, 2]}) == n_tokens("gpt-4o", '{"a":[1,2]}')


# --- chat ---------------------------------------------------------------------------------

# OpenAI cookbook, "How to count tokens with tiktoken": the API reports 129 prompt tokens
# for these messages on gpt-3.5-turbo / gpt-4 and 124 on gpt-4o / gpt-4o-mini.
COOKBOOK_MESSAGES: list[dict[str, Any]] = [
    {
        "role": "system",
        "content": "You are a helpful, pattern-following assistant that translates corporate "
        "jargon into plain English.",
    },
    {
        "role": "system",
        "name": "example_user",
        "content": "New synergies will help drive top-line growth.",
    },
    {
        "role": "system",
        "name": "example_assistant",
        "content": "Things working well together will increase revenue.",
    },
    {
        "role": "system",
        "name": "example_user",
        "content": "Let's circle back when we have more bandwidth to touch base on opportunities "
        "for increased leverage.",
    },
    {
        "role": "system",
        "name": "example_assistant",
        "content": "Let's talk later when we're less busy about how to do better.",
    },
    {
        "role": "user",
        "content": "This late pivot means we don't have time to boil the ocean for the client "
        "deliverable.",
    },
]


@pytest.mark.parametrize(
    ("model", "expected"),
    [("gpt-3.5-turbo", 129), ("gpt-4", 129), ("gpt-4o", 124), ("gpt-4o-mini", 124)],
)
def test_count_chat_matches_openai_cookbook(model: str, expected: int) -> None:
    assert count_chat(model, COOKBOOK_MESSAGES) == expected


def test_count_chat_overheads() -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "name": "ann", "content": "Hi there"},
    ]
    expected = (
        3 * 2
        + 3
        + n_tokens("gpt-4o", "system")
        + n_tokens("gpt-4o", "Be brief.")
        + n_tokens("gpt-4o", "user")
        + n_tokens("gpt-4o", "Hi there")
        + n_tokens("gpt-4o", "ann")
        + 1
    )
    assert count_chat("gpt-4o", messages) == expected
    assert count_chat("gpt-4o", []) == 3


def test_count_chat_text_parts_equal_sum_of_parts() -> None:
    parts = [{"type": "text", "text": "First part."}, {"type": "text", "text": "Second part!"}]
    as_parts = count_chat("gpt-4o", [{"role": "user", "content": parts}])
    empty = count_chat("gpt-4o", [{"role": "user", "content": ""}])
    assert as_parts == empty + n_tokens("gpt-4o", "First part.") + n_tokens(
        "gpt-4o", "Second part!"
    )


def _png(width: int, height: int) -> str:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    raw = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + ihdr + b"\x00" * 4
    return "data:image/png;base64," + base64.b64encode(raw + b"\x00" * 64).decode()


def _gif(width: int, height: int) -> str:
    raw = b"GIF89a" + struct.pack("<HH", width, height) + b"\x00" * 40
    return "data:image/gif;base64," + base64.b64encode(raw).decode()


def _jpeg(width: int, height: int) -> str:
    app0 = b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\x00" + b"\x01\x01\x00" + b"\x00" * 6
    exif = b"\xff\xe1" + struct.pack(">H", 2 + 3000) + b"\x00" * 3000  # pushes SOF past 64 chars
    sof = b"\xff\xc0" + struct.pack(">HBHHB", 11, 8, height, width, 1) + b"\x01\x11\x00"
    raw = b"\xff\xd8" + app0 + exif + sof + b"\xff\xd9"
    return "data:image/jpeg;base64," + base64.b64encode(raw).decode()


def _webp_vp8x(width: int, height: int) -> str:
    payload = b"VP8X" + struct.pack("<I", 10) + b"\x00" * 4
    payload += (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    raw = b"RIFF" + struct.pack("<I", len(payload) + 4) + b"WEBP" + payload + b"\x00" * 16
    return "data:image/webp;base64," + base64.b64encode(raw).decode()


def _image_message(url: str, detail: str | None = None) -> list[dict[str, Any]]:
    image: dict[str, Any] = {"url": url}
    if detail:
        image["detail"] = detail
    return [{"role": "user", "content": [{"type": "image_url", "image_url": image}]}]


def _image_cost(model: str, url: str, detail: str | None = None) -> int:
    empty = count_chat(model, [{"role": "user", "content": []}])
    return count_chat(model, _image_message(url, detail)) - empty


def test_image_tokens_follow_openai_tile_formula() -> None:
    # The worked examples in OpenAI's vision guide.
    # Size unknown (a URL): the most the formula allows, 2 x 4 tiles after scaling.
    assert _image_cost("gpt-4o", "https://example.com/cat.png") == 85 + 170 * 8
    assert _image_cost("gpt-4o", _png(1024, 1024), "high") == 765
    assert _image_cost("gpt-4o", _png(2048, 4096), "high") == 1105
    assert _image_cost("gpt-4o", _png(4096, 8192), "low") == 85
    assert _image_cost("gpt-4o", "https://example.com/cat.png", "low") == 85
    assert _image_cost("gpt-4o", _png(512, 512)) == 85 + 170
    assert _image_cost("gpt-4o", _gif(300, 200)) == 85 + 170
    assert _image_cost("gpt-4o", _jpeg(1000, 500)) == 85 + 170 * 2 * 1
    assert _image_cost("gpt-4o", _webp_vp8x(1600, 800)) == 85 + 170 * 3 * 2
    # Per-model constants from the same guide.
    assert _image_cost("gpt-4o-mini", "https://example.com/x.png") == 2833 + 8 * 5667
    assert _image_cost("gpt-4.1-mini", "https://example.com/x.png") == math.ceil(1536 * 1.62)
    assert _image_cost("gpt-4.1-mini", _png(512, 512)) == math.ceil(256 * 1.62)
    # The worst case is never below any real size's cost.
    for w, h in ((1024, 1024), (768, 2048), (2048, 768), (4000, 3000), (100, 9000)):
        assert _image_cost("gpt-4o", _png(w, h)) <= tokens.image_tokens_at_most("gpt-4o")


def test_image_tokens_for_claude_are_not_scaled() -> None:
    def cost(blocks: list[Any]) -> int:
        with_image = count_anthropic("claude-sonnet-4-5", [{"role": "user", "content": blocks}])
        without = count_anthropic("claude-sonnet-4-5", [{"role": "user", "content": []}])
        return with_image - without

    png = _png(1000, 1000).split(",", 1)[1]
    assert cost([{"type": "image", "source": {"type": "base64", "data": png}}]) == 1334
    url_source = {"type": "url", "url": "https://example.com/a.jpg"}
    assert cost([{"type": "image", "source": url_source}]) == 1600
    big = _png(4000, 3000).split(",", 1)[1]
    assert cost([{"type": "image", "source": {"type": "base64", "data": big}}]) == 1600


def _wav(seconds: float, byte_rate: int = 32_000) -> str:
    data_size = int(seconds * byte_rate)
    header = b"RIFF" + struct.pack("<I", 36 + data_size) + b"WAVE" + b"fmt "
    header += struct.pack("<IHHIIHH", 16, 1, 1, 16_000, byte_rate, 2, 16)
    header += b"data" + struct.pack("<I", data_size)
    return base64.b64encode(header + b"\x00" * data_size).decode()


def test_audio_and_file_parts() -> None:
    def cost(part: dict[str, Any]) -> int:
        return count_chat("gpt-4o", [{"role": "user", "content": [part]}]) - count_chat(
            "gpt-4o", [{"role": "user", "content": []}]
        )

    wav = {"type": "input_audio", "input_audio": {"data": _wav(2.0), "format": "wav"}}
    assert cost(wav) == 2 * tokens.AUDIO_TOKENS_PER_SECOND
    odd = {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "flac"}}
    assert cost(odd) == tokens.AUDIO_FLAT_TOKENS
    pdf = {"type": "file", "file": {"filename": "report.pdf", "file_data": "JVBERi0x"}}
    assert cost(pdf) == tokens.FILE_FLAT_TOKENS + n_tokens("gpt-4o", "report.pdf")


def test_tool_calls_and_tool_messages_count() -> None:
    args = '{"city":"Paris","unit":"celsius"}'
    call = {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": args},
            }
        ],
    }
    bare = {"role": "assistant", "content": None}
    delta = count_chat("gpt-4o", [call]) - count_chat("gpt-4o", [bare])
    assert delta == tokens.TOOL_CALL_OVERHEAD_TOKENS + n_tokens("gpt-4o", "get_weather") + (
        n_tokens("gpt-4o", args)
    )
    result = {"role": "tool", "tool_call_id": "call_1", "content": "18 degrees and sunny"}
    assert count_chat("gpt-4o", [result]) == 3 + 3 + n_tokens("gpt-4o", "tool") + n_tokens(
        "gpt-4o", "18 degrees and sunny"
    )


# The cookbook's tools example; the API reported 101 prompt tokens on gpt-4o and 105 on
# gpt-3.5-turbo / gpt-4.
WEATHER_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_current_weather",
            "description": "Get the current weather in a given location",
            "parameters": {
                "type": "object",
                "properties": {
                    "location": {
                        "type": "string",
                        "description": "The city and state, e.g. San Francisco, CA",
                    },
                    "unit": {
                        "type": "string",
                        "description": "The unit of temperature to return",
                        "enum": ["celsius", "fahrenheit"],
                    },
                },
                "required": ["location"],
            },
        },
    }
]
WEATHER_MESSAGES = [
    {
        "role": "system",
        "content": "You are a helpful assistant that can answer to questions about the weather.",
    },
    {"role": "user", "content": "What's the weather like in San Francisco?"},
]


@pytest.mark.parametrize(("model", "reported"), [("gpt-4o", 101), ("gpt-4", 105)])
def test_tool_estimate_is_close_to_reported_and_not_below(model: str, reported: int) -> None:
    estimate = count_chat(model, WEATHER_MESSAGES, tools=WEATHER_TOOLS)
    assert reported <= estimate <= reported * 1.3


def test_tools_and_functions_add_up() -> None:
    base = count_chat("gpt-4o", WEATHER_MESSAGES)
    assert count_chat("gpt-4o", WEATHER_MESSAGES, tools=[]) == base
    one = count_chat("gpt-4o", WEATHER_MESSAGES, tools=WEATHER_TOOLS)
    two = count_chat("gpt-4o", WEATHER_MESSAGES, tools=WEATHER_TOOLS * 2)
    assert two - one == one - base - tokens.TOOLS_OVERHEAD_TOKENS
    legacy = [WEATHER_TOOLS[0]["function"]]
    assert count_chat("gpt-4o", WEATHER_MESSAGES, functions=legacy) == one


# --- completions, embeddings ------------------------------------------------------------------


@pytest.mark.parametrize("fn", [count_prompt, count_embedding_input])
def test_prompt_shapes(fn: Any) -> None:
    a, b = "first prompt", "second, longer prompt"
    assert fn("gpt-4o", a) == n_tokens("gpt-4o", a)
    assert fn("gpt-4o", [a, b]) == n_tokens("gpt-4o", a) + n_tokens("gpt-4o", b)
    assert fn("gpt-4o", [1, 2, 3, 4]) == 4
    assert fn("gpt-4o", [[1, 2], [3], []]) == 3
    assert fn("gpt-4o", []) == 0
    assert fn("gpt-4o", None) == 0
    assert fn("gpt-4o", {"weird": "shape"}) == 0
    assert fn("text-embedding-3-small", a) == len(
        encoding_for("text-embedding-3-small").encode_ordinary(a)
    )


def test_token_ids_are_not_scaled_for_claude() -> None:
    assert count_prompt("claude-sonnet-4-5", [1, 2, 3]) == 3


# --- responses ---------------------------------------------------------------------------------


def test_responses_string_input_is_one_user_message() -> None:
    text = "Summarize the plot of Hamlet in two sentences."
    assert count_responses_input("gpt-4o", text) == count_chat(
        "gpt-4o", [{"role": "user", "content": text}]
    )


def test_responses_items() -> None:
    items: list[Any] = [
        {"role": "user", "content": [{"type": "input_text", "text": "What is 2+2?"}]},
        {"type": "function_call", "call_id": "c1", "name": "calc", "arguments": '{"x":"2+2"}'},
        {"type": "function_call_output", "call_id": "c1", "output": "4"},
        {"type": "item_reference", "id": "msg_123"},
    ]
    expected = (
        3
        + n_tokens("gpt-4o", "user")
        + n_tokens("gpt-4o", "What is 2+2?")
        + 3
        + n_tokens("gpt-4o", "calc")
        + n_tokens("gpt-4o", '{"x":"2+2"}')
        + 3
        + n_tokens("gpt-4o", "4")
        + 3
    )
    assert count_responses_input("gpt-4o", items) == expected
    with_instr = count_responses_input("gpt-4o", items, instructions="Answer tersely.")
    assert with_instr == expected + 3 + n_tokens("gpt-4o", "Answer tersely.")
    flat_tool = dict(WEATHER_TOOLS[0]["function"], type="function")  # Responses shape
    with_tools = count_responses_input("gpt-4o", items, tools=[flat_tool])
    assert with_tools - expected == count_chat("gpt-4o", [], tools=WEATHER_TOOLS) - count_chat(
        "gpt-4o", []
    )


def test_responses_image_part() -> None:
    items = [{"role": "user", "content": [{"type": "input_image", "image_url": _png(512, 512)}]}]
    empty = [{"role": "user", "content": []}]
    diff = count_responses_input("gpt-4o", items) - count_responses_input("gpt-4o", empty)
    assert diff == 255


# --- anthropic ---------------------------------------------------------------------------------


def test_anthropic_system_forms_agree_and_scale() -> None:
    msgs = [{"role": "user", "content": "Write a haiku about rain."}]
    as_str = count_anthropic("claude-sonnet-4-5", msgs, system="You are a poet.")
    as_blocks = count_anthropic(
        "claude-sonnet-4-5", msgs, system=[{"type": "text", "text": "You are a poet."}]
    )
    assert as_str == as_blocks
    unscaled = count_anthropic("claude-sonnet-4-5", msgs, system="You are a poet.", factor=1.0)
    text = sum(
        n_tokens("gpt-4o", s) for s in ("You are a poet.", "user", "Write a haiku about rain.")
    )
    assert unscaled == text + 3 + 3 + 3
    assert as_str == math.ceil(text * 1.15) + 9


def test_anthropic_tool_blocks_and_tools() -> None:
    tool_use = {"type": "tool_use", "id": "tu_1", "name": "lookup", "input": {"q": "rain"}}
    tool_result = {
        "type": "tool_result",
        "tool_use_id": "tu_1",
        "content": [{"type": "text", "text": "It rains 120 days a year."}],
    }
    msgs = [
        {"role": "assistant", "content": [tool_use]},
        {"role": "user", "content": [tool_result]},
    ]
    empty = [{"role": "assistant", "content": []}, {"role": "user", "content": []}]
    diff = count_anthropic("gpt-4o", msgs) - count_anthropic("gpt-4o", empty)
    assert diff == 3 + n_tokens("gpt-4o", "lookup") + n_tokens("gpt-4o", '{"q":"rain"}') + 3 + (
        n_tokens("gpt-4o", "It rains 120 days a year.")
    )
    tools = [{"name": "lookup", "description": "Look it up", "input_schema": {"type": "object"}}]
    with_tools = count_anthropic("claude-sonnet-4-5", msgs, tools=tools, factor=1.0)
    without = count_anthropic("claude-sonnet-4-5", msgs, factor=1.0)
    assert with_tools - without == (
        tokens.ANTHROPIC_TOOL_SYSTEM_TOKENS
        + tokens.TOOL_OVERHEAD_TOKENS
        + n_tokens("gpt-4o", "lookup:Look it up")
        + n_tokens("gpt-4o", '{"type":"object"}')
    )


# --- totality and monotonicity -----------------------------------------------------------------

json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=25,
)
part_types = st.sampled_from(
    [
        "text",
        "image_url",
        "input_image",
        "image",
        "input_audio",
        "file",
        "input_file",
        "document",
        "tool_use",
        "tool_result",
        "thinking",
        "redacted_thinking",
        "refusal",
        "input_text",
        "output_text",
        "function_call",
        "function_call_output",
        "reasoning",
        "item_reference",
        "message",
        "mystery",
    ]
)
fields = st.sampled_from(
    [
        "text",
        "image_url",
        "url",
        "detail",
        "source",
        "data",
        "input_audio",
        "format",
        "file",
        "content",
        "name",
        "input",
        "arguments",
        "output",
        "summary",
        "role",
        "thinking",
        "tool_calls",
        "function",
        "function_call",
        "type",
        "filename",
        "refusal",
    ]
)
parts = st.builds(
    lambda t, extra: {"type": t, **extra},
    part_types,
    st.dictionaries(fields, json_values, max_size=4),
)
message_like = st.dictionaries(
    fields, json_values | parts | st.lists(parts, max_size=3), max_size=5
)
anything = json_values | st.lists(message_like | parts | json_values, max_size=5)
models = st.sampled_from(["gpt-4o", "gpt-4", "claude-sonnet-4-5", "gpt-4.1-mini", "unknown-model"])


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(models, anything, anything, anything)
def test_counting_never_raises(model: str, a: Any, b: Any, c: Any) -> None:
    results = [
        count_chat(model, a, b, c),
        count_text(model, a),
        count_prompt(model, a),
        count_embedding_input(model, a),
        count_responses_input(model, a, b, c),
        count_anthropic(model, a, b, c),
    ]
    assert all(isinstance(r, int) and r >= 0 for r in results)


def test_counting_survives_odd_python_values() -> None:
    cyclic: list[Any] = []
    cyclic.append(cyclic)
    deep: Any = "x"
    for _ in range(5000):
        deep = [deep]
    odd = [
        {"role": "user", "content": [{"type": "text", "text": b"bytes"}]},
        {"role": "user", "content": {1, 2, 3}},
        {"role": object(), "content": [{"type": "tool_use", "input": {1, 2}}]},
        {"role": "user", "content": [{"type": "mystery", "x": cyclic}]},
        {"role": "user", "content": deep},
        {"role": "assistant", "tool_calls": [{"function": {"name": 2**80, "arguments": cyclic}}]},
        {("tuple", "key"): "v", "content": [{"type": "image_url", "image_url": "data:,x"}]},
        {"role": "user", "content": "\ud800 lone surrogate"},
        {
            "role": "user",
            "content": [{"type": "image", "source": {"type": "base64", "data": "!!"}}],
        },
    ]
    for model in ("gpt-4o", "claude-sonnet-4-5"):
        assert count_chat(model, odd, tools=[cyclic, {"function": cyclic}]) > 0
        assert count_anthropic(model, odd, system=deep, tools=[odd]) > 0
        assert count_responses_input(model, odd, instructions=cyclic) > 0
        assert count_text(model, cyclic) >= 0
        assert count_prompt(model, [cyclic, [True, "x", 1.5]]) >= 0


words = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1, max_size=60)


@settings(max_examples=150, deadline=None)
@given(models, st.lists(words, max_size=4), words)
def test_adding_text_adds_tokens(model: str, existing: list[str], extra: str) -> None:
    parts_before = [{"type": "text", "text": t} for t in existing]
    before = [{"role": "user", "content": parts_before}]
    after = [{"role": "user", "content": [*parts_before, {"type": "text", "text": extra}]}]
    assert count_chat(model, after) > count_chat(model, before)
    longer = [*before, {"role": "user", "content": extra}]
    assert count_chat(model, longer) >= count_chat(model, before) + 3 + 1
    assert count_anthropic(model, after) > count_anthropic(model, before)
    assert count_responses_input(model, [*existing, extra]) > count_responses_input(model, existing)
    assert count_prompt(model, [*existing, extra]) > count_prompt(model, existing)


def test_tool_json_is_compact() -> None:
    # The estimate serializes parameters compactly; whitespace must not inflate it.
    params = WEATHER_TOOLS[0]["function"]["parameters"]
    compact = json.dumps(params, separators=(",", ":"))
    tool = {"type": "function", "function": {"name": "f", "parameters": params}}
    counted = count_chat("gpt-4o", [], tools=[tool]) - count_chat("gpt-4o", [])
    assert counted == tokens.TOOLS_OVERHEAD_TOKENS + tokens.TOOL_OVERHEAD_TOKENS + n_tokens(
        "gpt-4o", "f"
    ) + n_tokens("gpt-4o", compact)


# --- structured outputs, inline files, custom tools -------------------------------------------

SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
          "additionalProperties": False}


def test_structured_output_schemas_count_like_tool_parameters() -> None:
    compact = json.dumps(SCHEMA, separators=(",", ":"))
    expected = tokens.FORMAT_OVERHEAD_TOKENS + n_tokens("gpt-4o", "city_answer") + n_tokens(
        "gpt-4o", compact)
    messages = [{"role": "user", "content": "Where?"}]
    chat_format = {"type": "json_schema",
                   "json_schema": {"name": "city_answer", "schema": SCHEMA, "strict": True}}
    assert count_chat("gpt-4o", messages, response_format=chat_format) - count_chat(
        "gpt-4o", messages) == expected
    text_format = {"type": "json_schema", "name": "city_answer", "schema": SCHEMA}
    assert count_responses_input("gpt-4o", "Where?", text_format=text_format) - \
        count_responses_input("gpt-4o", "Where?") == expected
    claude = count_anthropic("claude-sonnet-4-5", messages,
                             output_format={"type": "json_schema", "schema": SCHEMA})
    assert claude - count_anthropic("claude-sonnet-4-5", messages) == \
        tokens.FORMAT_OVERHEAD_TOKENS + math.ceil(n_tokens("gpt-4o", compact) * 1.15)
    # JSON mode costs its framing only, plain text nothing.
    assert count_chat("gpt-4o", messages, response_format={"type": "json_object"}) == \
        count_chat("gpt-4o", messages) + tokens.FORMAT_OVERHEAD_TOKENS
    assert count_chat("gpt-4o", messages, response_format={"type": "text"}) == \
        count_chat("gpt-4o", messages)


def test_custom_tool_grammars_are_counted() -> None:
    grammar = "start: expr\nexpr: NUMBER ('+' NUMBER)*\n%import common.NUMBER"
    tool = {"type": "custom", "name": "calc", "description": "adds",
            "format": {"type": "grammar", "syntax": "lark", "definition": grammar}}
    bare = {"type": "custom", "name": "calc", "description": "adds"}
    assert count_responses_input("gpt-4o", "hi", tools=[tool]) - count_responses_input(
        "gpt-4o", "hi", tools=[bare]) >= n_tokens("gpt-4o", grammar)


def _pdf(pages: int) -> str:
    objects = b"".join(b"%d 0 obj << /Type /Page /Parent 2 0 R >> endobj\n" % (i + 3)
                       for i in range(pages))
    raw = b"%PDF-1.7\n1 0 obj << /Type /Catalog /Pages 2 0 R >> endobj\n" \
          b"2 0 obj << /Type /Pages /Count " + str(pages).encode() + b" >> endobj\n" + objects
    return base64.b64encode(raw).decode()


def test_inline_pdfs_count_every_page_at_its_worst_case() -> None:
    assert tokens.inline_file_pages(_pdf(3)) == 3
    assert tokens.inline_file_pages("data:application/pdf;base64," + _pdf(2)) == 2
    assert tokens.inline_file_pages("JVBERi0x") is None  # "%PDF-1" and nothing else
    assert tokens.inline_file_pages(base64.b64encode(b"not a pdf").decode()) is None

    def cost(model: str, part: dict[str, Any]) -> int:
        return count_chat(model, [{"role": "user", "content": [part]}]) - count_chat(
            model, [{"role": "user", "content": []}])

    part = {"type": "file", "file": {"file_data": "data:application/pdf;base64," + _pdf(4)}}
    page = tokens.PDF_PAGE_TEXT_TOKENS + tokens.image_tokens_at_most("gpt-4o")
    assert cost("gpt-4o", part) == 4 * page
    document = {"type": "document", "source": {"type": "base64",
                                               "media_type": "application/pdf",
                                               "data": _pdf(2)}}
    with_pdf = count_anthropic("claude-sonnet-4-5", [{"role": "user", "content": [document]}])
    empty = count_anthropic("claude-sonnet-4-5", [{"role": "user", "content": []}])
    assert with_pdf - empty == 2 * (tokens.PDF_PAGE_TEXT_TOKENS
                                    + tokens.CLAUDE_IMAGE_MAX_TOKENS)
