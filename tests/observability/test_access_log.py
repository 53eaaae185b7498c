"""``tokenstile serve --log-format json``: one JSON line per request with who, what, how
much and how it ended, every other log record as JSON too, and never a secret."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest

from tests.conftest import FakeHandle, settled
from tests.observability.conftest import leaked, served_gateway
from tokenstile.observability.logs import ACCESS_LOGGER, JsonFormatter, access_fields
from tokenstile.types import LedgerRow

CHAT = {"model": "gpt-4o-mini", "max_tokens": 7,
        "messages": [{"role": "user", "content": "hello there"}]}


def access_lines(caplog: pytest.LogCaptureFixture, count: int = 0) -> list[dict[str, Any]]:
    formatter = JsonFormatter()
    records = settled(lambda: [r for r in caplog.records if r.name == ACCESS_LOGGER],
                      lambda found: len(found) >= count)
    return [orjson.loads(formatter.format(r)) for r in records]


def test_each_request_is_one_access_line_with_caller_models_tokens_cost_and_outcome(
        make_gateway: Any, fake: FakeHandle, caplog: pytest.LogCaptureFixture) -> None:
    gateway = make_gateway({"projects": {"tight": {"daily_limit": 30}}})
    key = gateway.key(project="obs", user="olga", team="core")
    tight = gateway.key(project="tight", user="tom")
    caplog.set_level(logging.INFO, logger=ACCESS_LOGGER)
    api = openai.OpenAI(base_url=gateway.v1, api_key=key, max_retries=0)
    answer = api.chat.completions.create(**CHAT)
    stream = api.chat.completions.create(**CHAT, stream=True,
                                         stream_options={"include_usage": True})
    assert [c for c in stream if c.usage]
    with pytest.raises(openai.RateLimitError):
        openai.OpenAI(base_url=gateway.v1, api_key=tight, max_retries=0) \
            .chat.completions.create(**{**CHAT, "max_tokens": 100})
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=gateway.v1, api_key="ts-not-a-key", max_retries=0) \
            .chat.completions.create(**CHAT)
    lines = access_lines(caplog, 4)
    assert len(lines) == 4
    ok, streamed, blocked, stranger = lines
    row = gateway.rows()[0]
    assert answer.usage is not None
    assert ok["request_id"] == row.id
    assert ok["event"] == "request" and ok["level"] == "info"
    assert (ok["organization"], ok["project"], ok["user"], ok["key_id"]) == \
        ("default", "obs", "olga", row.key_id)
    assert (ok["requested_model"], ok["served_model"]) == ("gpt-4o-mini", "gpt-4o-mini")
    assert ok["input_tokens"] == answer.usage.prompt_tokens > 0
    assert ok["output_tokens"] == answer.usage.completion_tokens == 7
    assert ok["cost_usd"] == row.cost_nano / 1e9 > 0
    assert (ok["outcome"], ok["status"]) == ("ok", 200)
    assert 0 < ok["latency_ms"] < 10_000
    assert streamed["streamed"] is True and streamed["output_tokens"] == 7
    assert (blocked["outcome"], blocked["status"], blocked["project"]) == \
        ("blocked", 429, "tight")
    assert blocked["block_reason"] and blocked["cost_usd"] == 0
    assert (stranger["status"], stranger["key_id"], stranger["organization"]) == \
        (401, None, None)
    text = "\n".join(orjson.dumps(line).decode() for line in lines)
    assert not leaked(text, key, tight, "ts-not-a-key")


def test_no_access_records_are_built_unless_asked(
        make_gateway: Any, caplog: pytest.LogCaptureFixture) -> None:
    gateway = make_gateway()
    openai.OpenAI(base_url=gateway.v1, api_key=gateway.key(), max_retries=0) \
        .chat.completions.create(**CHAT)
    assert len(gateway.rows()) == 1  # queued in the same step as the access record
    assert not [r for r in caplog.records if r.name == ACCESS_LOGGER]


def test_the_json_formatter_keeps_extras_and_tracebacks() -> None:
    log = logging.getLogger("tokenstile.test")
    try:
        raise ValueError("boom")
    except ValueError:
        record = log.makeRecord(log.name, logging.ERROR, __file__, 1, "failed %s", ("x",),
                                exc_info=__import__("sys").exc_info(),
                                extra={"store": "counters"})
    line = orjson.loads(JsonFormatter().format(record))
    assert line["message"] == "failed x" and line["store"] == "counters"
    assert line["level"] == "error" and "ValueError: boom" in line["exception"]
    assert line["ts"].endswith("Z")


def test_access_fields_carry_no_free_form_client_data() -> None:
    row = LedgerRow(id="req_1", ts=0.0, key_id="key_1", project="p", tags={"t": "v"},
                    detail={"policies": ["x"]}, trace_id="client-trace")
    fields = access_fields(row)
    assert "tags" not in fields and "detail" not in fields
    assert fields["key_id"] == "key_1"


def test_a_served_gateway_logs_json_lines(fake: FakeHandle, tmp_path: Path) -> None:
    proc, key = served_gateway(tmp_path, fake, args=("--log-format", "json"))
    try:
        api = openai.OpenAI(base_url=proc.url + "/v1", api_key=key, max_retries=0)
        raw = api.chat.completions.with_raw_response.create(**CHAT)
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=proc.url + "/v1", api_key=key[:-4] + "zzzz",
                          max_retries=0).chat.completions.create(**CHAT)
    finally:
        assert proc.stop() in (0, -15)
    text = proc.log_path.read_text()
    lines = [orjson.loads(line) for line in text.splitlines() if line.strip()]
    assert lines, "nothing was logged"
    banner = lines[0]
    assert banner["logger"] == "tokenstile" and "serving on" in banner["message"]
    access = [line for line in lines if line.get("event") == "request"]
    assert [a["status"] for a in access] == [200, 401]
    assert access[0]["request_id"] == raw.headers["x-tokenstile-request-id"]
    assert access[0]["output_tokens"] == 7 and access[0]["project"] == "obs"
    assert not leaked(text, key, key[:-4] + "zzzz")


def test_text_is_the_default_and_says_nothing_per_request(fake: FakeHandle,
                                                          tmp_path: Path) -> None:
    proc, key = served_gateway(tmp_path, fake)
    try:
        openai.OpenAI(base_url=proc.url + "/v1", api_key=key, max_retries=0) \
            .chat.completions.create(**CHAT)
    finally:
        proc.stop()
    text = proc.log_path.read_text()
    assert text.startswith("tokenstile ") and "serving on" in text
    assert "req_" not in text and "{" not in text
