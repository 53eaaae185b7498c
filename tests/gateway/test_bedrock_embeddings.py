"""Titan text embeddings on Bedrock's InvokeModel, from boto3 through the gateway to the fake
upstream: signed, counted by the answer's ``inputTextTokenCount`` (or the gateway's own count,
flagged, when it has none), priced at AWS's prices, held to budgets and word lists, and
refused as Bedrock refuses."""

from __future__ import annotations

import json
from typing import Any

import genai_prices
import pytest
from botocore.exceptions import ClientError

from tests.conftest import FakeHandle, Gateway
from tests.gateway.bedrock_clients import assert_signed_upstream, bedrock_upstream, runtime
from tokenstile.testing.fake_upstream import count_text

TITAN = "amazon.titan-embed-text-v2:0"


def aws_price(input_tokens: int) -> int:
    price = genai_prices.calc_price(genai_prices.Usage(input_tokens=input_tokens), TITAN,
                                    provider_id="aws").total_price
    return int((price * 1_000_000_000).to_integral_value())


def invoke(gateway: Gateway, key: str, body: dict[str, Any]) -> dict[str, Any]:
    answer = runtime(gateway, key).invoke_model(modelId=TITAN, body=json.dumps(body))
    parsed: dict[str, Any] = json.loads(answer["body"].read())
    return parsed


def test_a_titan_embedding_is_signed_counted_and_priced(bedrock: Gateway,
                                                        fake: FakeHandle) -> None:
    key = bedrock.key(project="search", user="indexer")
    text = "Budgets are the product, and the ledger is the truth."
    answer = invoke(bedrock, key, {"inputText": text, "dimensions": 256, "normalize": True})
    record = fake.fake.tally.last
    assert record is not None and record.route == f"/model/{TITAN}/invoke"
    assert_signed_upstream(record, key)
    assert record.body == {"inputText": text, "dimensions": 256, "normalize": True}
    assert len(answer["embedding"]) == 256
    assert answer["inputTextTokenCount"] == record.input_tokens == count_text(text)
    [row] = bedrock.rows()
    assert (row.api, row.upstream, row.served_model, row.project, row.user) == (
        "embeddings", "aws", TITAN, "search", "indexer")
    assert (row.status, row.outcome, row.output_tokens, row.estimated) == (200, "ok", 0, False)
    assert row.input_tokens == record.input_tokens
    assert row.cost_nano == aws_price(record.input_tokens) > 0


def test_an_answer_without_a_token_count_is_billed_at_the_gateways_count(
        bedrock: Gateway, fake: FakeHandle) -> None:
    text = "Count these words by hand, every one of them, please. [[fake:no_usage]]"
    answer = invoke(bedrock, bedrock.key(), {"inputText": text})
    assert "inputTextTokenCount" not in answer
    record = fake.fake.tally.last
    [row] = bedrock.rows()
    assert row.estimated and row.input_tokens > record.input_tokens > 0  # never low
    assert row.cost_nano == aws_price(row.input_tokens)


@pytest.mark.parametrize(("body", "says"), [
    ({}, "'inputText' is required"),
    ({"inputText": ""}, "'inputText' must be a non-empty string"),
    ({"inputText": "x", "dimensions": 300}, "'dimensions' must be one of 256, 512, 1024"),
    ({"inputText": "x", "normalize": "yes"}, "'normalize' must be true or false"),
    ({"inputText": "x", "embeddingTypes": ["int8"]}, "'embeddingTypes' must be"),
])
def test_malformed_titan_requests_are_validation_exceptions(
        bedrock: Gateway, fake: FakeHandle, body: dict[str, Any], says: str) -> None:
    with pytest.raises(ClientError) as refused:
        invoke(bedrock, bedrock.key(), body)
    error = refused.value.response
    assert error["Error"]["Code"] == "ValidationException" and says in error["Error"]["Message"]
    assert fake.fake.tally.requests == 0
    [row] = bedrock.rows()
    assert row.status == 400 and row.cost_nano == 0


def test_titan_embeddings_are_not_streamed(bedrock: Gateway, fake: FakeHandle) -> None:
    with pytest.raises(ClientError) as refused:
        runtime(bedrock, bedrock.key()).invoke_model_with_response_stream(
            modelId=TITAN, body=json.dumps({"inputText": "hi"}))
    assert "not streamed" in refused.value.response["Error"]["Message"]
    assert fake.fake.tally.requests == 0


def test_a_budget_and_a_word_list_hold_titan_embeddings(make_gateway: Any,
                                                        signing: FakeHandle) -> None:
    gateway = make_gateway({**bedrock_upstream(signing), "limits": [
        {"name": "embed-day", "scope": "project", "window": "day", "unit": "input_tokens",
         "amount": 30}], "policies": {"wordlists": {"secrets": ["project zeus"]},
                                      "request_wordlists": "secrets:redact"}})
    key = gateway.key()
    invoke(gateway, key, {"inputText": "Is Project Zeus late?"})
    record = signing.fake.tally.last
    assert record is not None and record.body == {"inputText": "Is **** late?"}
    with pytest.raises(ClientError) as spent:
        invoke(gateway, key, {"inputText": "a longer text " * 10})
    assert spent.value.response["Error"]["Code"] == "ThrottlingException"
    assert "of its 30 daily input tokens" in spent.value.response["Error"]["Message"]
    assert signing.fake.tally.requests == 1
