"""Upstreams that refuse ``stream_options`` (older vLLM builds, OpenAI-compatible servers that
forbid unknown fields): with ``stream_usage: false`` the gateway does not ask them for a
usage chunk, and a stream that ends without one is billed from the text it carried (the row
``estimated``) and its reservation settled; without the setting the client reads the
upstream's 400, which costs nothing. The setting applies on a config reload."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest
import tiktoken
import yaml

from tests.admin.conftest import ADMIN_KEY, Admin, FileGateway
from tests.conftest import UPSTREAM_KEY, FakeHandle, Gateway, deep_merge, served_fake
from tokenstile.config import ConfigError, parse_config
from tokenstile.testing.fake_upstream import FakeRecord

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
PRICE = {"input": 0.2, "output": 0.6}  # USD per million tokens
PROMPT = "Name the planets, briefly."
O200K = tiktoken.get_encoding("o200k_base")


@pytest.fixture(scope="module")
def refusing_server() -> Iterator[FakeHandle]:
    """A server that answers 400 to any chat or completions request with ``stream_options``
    (and so streams without a usage chunk)."""
    with served_fake(defaults={"refuse_stream_options": True}) as handle:
        yield handle


@pytest.fixture
def refusing(refusing_server: FakeHandle) -> FakeHandle:
    refusing_server.fake.reset()
    return refusing_server


def config(server: FakeHandle, tmp_path: Path, **upstream: Any) -> dict[str, Any]:
    return {
        "upstreams": {"gpu": {"kind": "openai", "base_url": server.v1,
                              "api_key": UPSTREAM_KEY, **upstream}},
        "routes": [{"match": "meta-llama/*", "upstream": "gpu"}],
        "prices": {"meta-llama/*": PRICE},
        "limits": [{"name": "daily-usd", "scope": "project", "window": "day", "unit": "usd",
                    "amount": 5}],
        "storage": {"counters": "memory://", "database": f"sqlite:///{tmp_path}/su.db"},
    }


def sdk(gateway: Gateway, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.v1, api_key=key, max_retries=0)


def last(server: FakeHandle) -> FakeRecord:
    record = server.fake.tally.last
    assert record is not None
    return record


def chat_input_tokens(messages: list[dict[str, str]]) -> int:
    """OpenAI's cookbook: 3 tokens frame each message, its values are text, 3 prime the reply."""
    return sum(3 + sum(len(O200K.encode_ordinary(v)) for v in m.values())
               for m in messages) + 3


def nano(input_tokens: int, output_tokens: int) -> int:
    usd = (Decimal(str(PRICE["input"])) * input_tokens
           + Decimal(str(PRICE["output"])) * output_tokens) / 1_000_000
    return int((usd * 1_000_000_000).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def usd_counter(gateway: Gateway, project: str) -> int:
    return gateway.settled_counter("daily-usd", project)


def no_reservation_left(gateway: Gateway) -> bool:
    runtime = gateway.runtime
    claimed = gateway.run(runtime.counters.claim_expired(runtime.clock.now() + 10**6))
    return claimed == [] and not runtime.admission.leases.live


def streamed_text(chunks: list[Any]) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def test_without_stream_usage_a_stream_is_billed_from_its_text_and_settled(
        make_gateway: Any, refusing: FakeHandle, tmp_path: Path) -> None:
    gateway = make_gateway(config(refusing, tmp_path, stream_usage=False))
    messages = [{"role": "user", "content": PROMPT}]
    chunks = list(sdk(gateway, gateway.key(project="p")).chat.completions.create(
        model=MODEL, messages=messages, max_tokens=9, stream=True))  # type: ignore[arg-type]
    record = last(refusing)
    assert "stream_options" not in record.body and record.completed
    text = streamed_text(chunks)
    assert text and all(c.usage is None for c in chunks)
    [row] = gateway.rows()
    expected_out = len(O200K.encode_ordinary(text))
    expected_in = chat_input_tokens(messages)
    assert (row.input_tokens, row.output_tokens) == (expected_in, expected_out) == (
        record.input_tokens, record.output_tokens)  # what the server would have reported
    assert row.estimated and row.streamed and row.outcome == "ok" and row.status == 200
    assert row.upstream == "gpu" and row.served_model == MODEL
    assert row.cost_nano == nano(expected_in, expected_out) > 0
    # The reservation became the counted cost: nothing else is held against the budget.
    assert usd_counter(gateway, "p") == row.cost_nano
    assert no_reservation_left(gateway)


def test_without_stream_usage_the_clients_own_stream_options_go_as_sent(
        make_gateway: Any, fake: FakeHandle, tmp_path: Path) -> None:
    """A server that takes the field: the client's own request for usage is honoured, and
    the stream is billed from the usage it then carries."""
    gateway = make_gateway(config(fake, tmp_path, stream_usage=False))
    api = sdk(gateway, gateway.key(project="p"))
    chunks = list(api.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": PROMPT}], max_tokens=6,
        stream=True, stream_options={"include_usage": True}))
    assert last(fake).body["stream_options"] == {"include_usage": True}
    usage = chunks[-1].usage
    assert usage is not None and usage.completion_tokens == 6
    completions = list(api.completions.create(model=MODEL, prompt=PROMPT, max_tokens=4,
                                              stream=True))
    assert "stream_options" not in last(fake).body and completions
    whole, streamed = gateway.rows()
    assert not whole.estimated and whole.output_tokens == 6
    assert streamed.api == "completions" and streamed.estimated
    assert streamed.output_tokens == 4 == last(fake).output_tokens


def test_with_stream_usage_the_upstreams_400_reaches_the_client_and_costs_nothing(
        make_gateway: Any, refusing: FakeHandle, tmp_path: Path) -> None:
    gateway = make_gateway(config(refusing, tmp_path))
    with pytest.raises(openai.BadRequestError) as caught:
        list(sdk(gateway, gateway.key(project="p")).chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": PROMPT}], max_tokens=9,
            stream=True))
    assert caught.value.status_code == 400
    assert "stream_options" in caught.value.message  # the upstream's own words
    assert last(refusing).body["stream_options"] == {"include_usage": True}
    [row] = gateway.rows()
    assert (row.status, row.outcome, row.cost_nano) == (400, "upstream_error", 0)
    assert row.input_tokens == row.output_tokens == 0
    assert usd_counter(gateway, "p") == 0
    assert no_reservation_left(gateway)


def test_stream_usage_applies_on_a_reload(refusing: FakeHandle, tmp_path: Path) -> None:
    base = {**config(refusing, tmp_path), "server": {"admin_key": ADMIN_KEY}}
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(base))
    file_gateway = FileGateway(path)
    try:
        api = sdk(file_gateway, file_gateway.key(project="p"))

        def stream() -> str:
            return streamed_text(list(api.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": PROMPT}], max_tokens=5,
                stream=True)))

        with pytest.raises(openai.BadRequestError):
            stream()
        file_gateway.write(deep_merge(base, {"upstreams": {"gpu": {"stream_usage": False}}}))
        status = Admin(file_gateway.url).call("POST", "/config/reload")
        assert status["status"] == "ok" and status["pending_restart"] == []
        assert stream()
        assert "stream_options" not in last(refusing).body
        refused, billed = file_gateway.rows()
        assert refused.status == 400 and billed.status == 200 and billed.estimated
        assert billed.output_tokens == 5
    finally:
        file_gateway.close()


def test_without_stream_usage_a_groq_stream_is_billed_from_its_x_groq_usage(
        make_gateway: Any, fake: FakeHandle, tmp_path: Path) -> None:
    gateway = make_gateway(config(fake, tmp_path, stream_usage=False))
    fake.fake.script([{"usage_dialect": "groq"}])
    chunks = list(sdk(gateway, gateway.key(project="p")).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": PROMPT}], max_tokens=7,
        stream=True))
    record = last(fake)
    assert "stream_options" not in record.body and streamed_text(chunks)
    [row] = gateway.rows()
    assert not row.estimated
    assert (row.input_tokens, row.output_tokens) == (record.input_tokens, 7)
    assert usd_counter(gateway, "p") == row.cost_nano == nano(row.input_tokens, 7)


def test_without_stream_usage_a_messages_stream_over_chat_is_billed_from_its_text(
        make_gateway: Any, refusing: FakeHandle, tmp_path: Path) -> None:
    """The ``anthropic`` SDK, to a model on such a server: its request is translated to a
    chat stream that asks for no usage, and billed from the text it carried."""
    gateway = make_gateway(config(refusing, tmp_path, stream_usage=False))
    client = anthropic.Anthropic(base_url=gateway.url, api_key=gateway.key(project="p"),
                                 max_retries=0)
    with client.messages.stream(model=MODEL, max_tokens=8,
                                messages=[{"role": "user", "content": PROMPT}]) as stream:
        text = "".join(stream.text_stream)
    record = last(refusing)
    assert record.completed and "stream_options" not in record.body
    [row] = gateway.rows()
    assert row.api == "messages" and row.estimated and row.status == 200
    assert row.output_tokens == len(O200K.encode_ordinary(text)) == record.output_tokens
    assert usd_counter(gateway, "p") == row.cost_nano == nano(row.input_tokens, 8)
    assert no_reservation_left(gateway)


def test_stream_usage_is_a_setting_of_openai_compatible_upstreams_only() -> None:
    with pytest.raises(ConfigError) as refused:
        parse_config({"upstreams": {"claude": {"kind": "anthropic", "stream_usage": False,
                                               "base_url": "https://api.anthropic.com"}}},
                     env={})
    [error] = refused.value.errors
    assert error.startswith("upstreams.claude: stream_usage: only for OpenAI-compatible")
    azure = parse_config({"upstreams": {"az": {
        "kind": "azure", "base_url": "https://r.openai.azure.com/openai",
        "stream_usage": False}}}, env={})
    assert azure.upstreams["az"].stream_usage is False
