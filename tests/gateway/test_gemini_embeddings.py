"""Gemini's embedding methods through the gateway, from the ``google-genai`` SDK (which calls
``batchEmbedContents``) and by hand (``embedContent``): counted, priced at Google's prices by
the ``usageMetadata`` the answer carries (or at the gateway's own count, flagged, when it
carries none), held to budgets, word lists and routes, and refused in Google's shape."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import genai_prices
import httpx2 as httpx
import openai
import pytest
from google.genai import errors, types

from tests.conftest import FakeHandle, Gateway
from tests.gateway.genai_clients import client, gemini_upstream
from tokenstile.testing.fake_upstream import count_text

EMBED = "gemini-embedding-001"


def google_price(input_tokens: int) -> int:
    """What Google bills for embedding ``input_tokens``, by genai-prices' own calculator."""
    price = genai_prices.calc_price(genai_prices.Usage(input_tokens=input_tokens), EMBED,
                                    provider_id="google").total_price
    return int((price * 1_000_000_000).to_integral_value())


def embed(gateway: Gateway, key: str, body: dict[str, Any], model: str = EMBED,
          method: str = "embedContent") -> httpx.Response:
    return httpx.post(f"{gateway.url}/v1beta/models/{model}:{method}",
                      headers={"x-goog-api-key": key}, json=body, timeout=10)


def test_the_sdk_embeds_a_batch_counted_and_priced(gemini: Gateway, google: FakeHandle) -> None:
    key = gemini.key(project="search", user="indexer")
    texts = ["The ledger is the truth.", "Budgets are the product."]
    answer = client(gemini, key).models.embed_content(
        model=EMBED, contents=texts,
        config=types.EmbedContentConfig(task_type="RETRIEVAL_DOCUMENT",
                                        output_dimensionality=4))
    record = google.fake.tally.last
    assert record is not None and record.route == f"/v1beta/models/{EMBED}:batchEmbedContents"
    assert [r["model"] for r in record.body["requests"]] == [f"models/{EMBED}"] * 2
    assert answer.embeddings is not None and len(answer.embeddings) == 2
    assert all(len(e.values or ()) == 4 for e in answer.embeddings)
    assert record.input_tokens == sum(count_text(t) for t in texts)
    [row] = gemini.rows()
    assert (row.api, row.upstream, row.served_model, row.project, row.user) == (
        "batch_embed_contents", "google", EMBED, "search", "indexer")
    assert (row.status, row.outcome, row.output_tokens) == (200, "ok", 0)
    assert row.input_tokens == record.input_tokens and not row.estimated
    assert row.cost_nano == google_price(record.input_tokens) > 0


def test_embed_content_by_hand_with_a_title(gemini: Gateway, google: FakeHandle) -> None:
    key = gemini.key()
    body = {"content": {"parts": [{"text": "A page about budgets."}]},
            "taskType": "RETRIEVAL_DOCUMENT", "title": "Budgets"}
    answer = embed(gemini, key, body)
    assert answer.status_code == 200, answer.text
    assert len(answer.json()["embedding"]["values"]) == google.fake.settings.embedding_dim
    record = google.fake.tally.last
    assert record is not None and record.route == f"/v1beta/models/{EMBED}:embedContent"
    assert record.body == body  # the model and the gateway's key stay out of the body
    [row] = gemini.rows()
    assert row.api == "embed_content" and row.input_tokens == record.input_tokens == \
        count_text("A page about budgets.") + count_text("Budgets")
    assert row.cost_nano == google_price(record.input_tokens)


def test_an_answer_without_usage_is_billed_at_the_gateways_count_and_flagged(
        gemini: Gateway, google: FakeHandle) -> None:
    text = "Count me by hand, please, every single word. [[fake:no_usage]]"
    answer = embed(gemini, gemini.key(), {"content": {"parts": [{"text": text}]}})
    assert answer.status_code == 200 and "usageMetadata" not in answer.json()
    record = google.fake.tally.last
    [row] = gemini.rows()
    assert row.estimated and row.input_tokens > record.input_tokens > 0  # never low
    assert row.cost_nano == google_price(row.input_tokens)


def test_a_budget_refuses_before_the_upstream_and_in_googles_shape(
        make_gateway: Any, google: FakeHandle) -> None:
    gateway = make_gateway({**gemini_upstream(google), "limits": [
        {"name": "embed-day", "scope": "project", "window": "day", "unit": "input_tokens",
         "amount": 40}]})
    api = client(gateway, gateway.key()).models
    api.embed_content(model=EMBED, contents=["short"])
    with pytest.raises(errors.ClientError) as refused:
        api.embed_content(model=EMBED, contents=["a longer text " * 20])
    assert (refused.value.code, refused.value.status) == (429, "RESOURCE_EXHAUSTED")
    assert "2 of its 40 daily input tokens" in (refused.value.message or "")
    assert google.fake.tally.requests == 1
    refused_row = [r for r in gateway.rows() if r.status == 429]
    assert len(refused_row) == 1 and refused_row[0].cost_nano == 0


@pytest.mark.parametrize(("method", "body", "param"), [
    ("batchEmbedContents", {}, "'requests' is required"),
    ("batchEmbedContents", {"requests": "text"}, "'requests' must be a non-empty array"),
    ("batchEmbedContents", {"requests": [{"model": "models/other",
                                          "content": {"parts": [{"text": "x"}]}}]},
     "'requests[0].model' is 'models/other'"),
    ("batchEmbedContents", {"requests": [7]}, "'requests[0]' must be"),
    ("embedContent", {}, "'content' is required"),
    ("embedContent", {"content": {"parts": [{"text": 5}]}}, "'content.parts[0].text' must"),
    ("embedContent", {"content": {"parts": [{"text": "x"}]}, "title": 3},
     "'title' must be a string"),
])
def test_malformed_requests_are_refused_in_googles_shape(
        gemini: Gateway, google: FakeHandle, method: str, body: dict[str, Any],
        param: str) -> None:
    answer = embed(gemini, gemini.key(), body, method=method)
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["status"] == "INVALID_ARGUMENT" and param in error["message"]
    assert google.fake.tally.requests == 0
    [row] = gemini.rows()
    assert row.status == 400 and row.cost_nano == 0


def test_a_routed_model_is_named_in_every_request_of_the_batch(
        make_gateway: Any, google: FakeHandle) -> None:
    gateway = make_gateway({**gemini_upstream(google), "routes": [
        {"match": "embedder", "upstream": "google", "model": EMBED}]})
    answer = embed(gateway, gateway.key(), {"requests": [
        {"model": "models/embedder", "content": {"parts": [{"text": "one"}]}},
        {"content": {"parts": [{"text": "two"}]}}]}, model="embedder",
        method="batchEmbedContents")
    assert answer.status_code == 200, answer.text
    assert len(answer.json()["embeddings"]) == 2
    record = google.fake.tally.last
    assert record is not None and record.route == f"/v1beta/models/{EMBED}:batchEmbedContents"
    assert [r["model"] for r in record.body["requests"]] == [f"models/{EMBED}"] * 2
    [row] = gateway.rows()
    assert (row.requested_model, row.served_model) == ("embedder", EMBED)


def test_word_lists_read_the_embedded_text_and_title(make_gateway: Any,
                                                     google: FakeHandle) -> None:
    gateway = make_gateway({**gemini_upstream(google), "policies": {
        "wordlists": {"secrets": ["project zeus"]}, "request_wordlists": "secrets:redact"}})
    answer = embed(gateway, gateway.key(), {
        "content": {"parts": [{"text": "Is Project Zeus late?"}]}, "title": "project zeus"})
    assert answer.status_code == 200, answer.text
    record = google.fake.tally.last
    assert record is not None
    assert record.body == {"content": {"parts": [{"text": "Is **** late?"}]}, "title": "****"}


# --- from the openai SDK ------------------------------------------------------------------


def openai_client(gateway: Gateway, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.v1, api_key=key, max_retries=0)


def test_openai_embeddings_are_served_by_batch_embed_contents(
        gemini: Gateway, google: FakeHandle) -> None:
    texts = ["first text", "second, longer text"]
    api = openai_client(gemini, gemini.key()).embeddings
    answer = api.create(model=EMBED, input=texts, dimensions=3)
    record = google.fake.tally.last
    assert record is not None and record.route == f"/v1beta/models/{EMBED}:batchEmbedContents"
    assert record.body == {"requests": [
        {"model": f"models/{EMBED}", "content": {"parts": [{"text": t}]},
         "outputDimensionality": 3} for t in texts]}
    assert [d.index for d in answer.data] == [0, 1]
    assert all(len(d.embedding) == 3 for d in answer.data)
    assert answer.usage.prompt_tokens == record.input_tokens
    # The SDK asks for base64 when none is named, and decodes it: the same vectors.
    again = api.create(model=EMBED, input=texts, dimensions=3, encoding_format="float")
    assert [d.embedding for d in again.data] == [d.embedding for d in answer.data]
    rows = gemini.rows()
    assert [r.api for r in rows] == ["embeddings"] * 2
    assert all(r.served_model == EMBED and not r.estimated and
               r.cost_nano == google_price(record.input_tokens) for r in rows)


def test_openai_embeddings_without_usage_report_and_bill_the_gateways_count(
        gemini: Gateway, google: FakeHandle) -> None:
    answer = openai_client(gemini, gemini.key()).embeddings.create(
        model=EMBED, input="some words to count [[fake:no_usage]]")
    [row] = gemini.rows()
    assert row.estimated and answer.usage.prompt_tokens == row.input_tokens > \
        google.fake.tally.last.input_tokens  # type: ignore[union-attr]


def test_openai_embeddings_that_gemini_cannot_take_are_refused(
        gemini: Gateway, google: FakeHandle) -> None:
    api = openai_client(gemini, gemini.key()).embeddings
    with pytest.raises(openai.BadRequestError) as ids:
        api.create(model=EMBED, input=[[1, 2, 3]])
    assert "token ids" in ids.value.message
    with pytest.raises(openai.BadRequestError) as dims:
        api.create(model=EMBED, input="x", dimensions=0)
    assert "'dimensions'" in dims.value.message
    assert google.fake.tally.requests == 0


def test_a_repeated_embedding_is_a_free_cache_hit(make_gateway: Any, google: FakeHandle,
                                                  tmp_path: Path) -> None:
    gateway = make_gateway({**gemini_upstream(google),
                            "cache": {"store": f"sqlite:///{tmp_path}/cache.db"}})
    key = gateway.key()
    body = {"requests": [{"model": f"models/{EMBED}",
                          "content": {"parts": [{"text": "cache me"}]}}]}
    first = embed(gateway, key, body, method="batchEmbedContents")
    second = embed(gateway, key, body, method="batchEmbedContents")
    assert (first.headers["x-tokenstile-cache"], second.headers["x-tokenstile-cache"]) == (
        "miss", "hit")
    assert second.json() == first.json() and google.fake.tally.requests == 1
    miss, hit = gateway.rows()
    assert hit.cost_nano == 0 and hit.saved_nano == miss.cost_nano > 0


def test_a_batch_holds_at_most_max_messages_requests(make_gateway: Any,
                                                     google: FakeHandle) -> None:
    gateway = make_gateway({**gemini_upstream(google), "server": {"max_messages": 3}})
    one = {"content": {"parts": [{"text": "x"}]}}
    assert embed(gateway, gateway.key(), {"requests": [one] * 3},
                 method="batchEmbedContents").status_code == 200
    refused = embed(gateway, gateway.key(), {"requests": [one] * 4},
                    method="batchEmbedContents")
    assert refused.status_code == 400
    assert "'requests' has 4 items" in refused.json()["error"]["message"]
    assert google.fake.tally.requests == 1


def test_inline_data_is_hidden_input_reserved_at_its_worst_case(make_gateway: Any,
                                                                google: FakeHandle) -> None:
    image = {"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}}
    body = {"content": {"parts": [{"text": "a picture"}, image]}}
    capped = make_gateway({**gemini_upstream(google), "limits": [
        {"name": "per-call", "scope": "project", "window": "request", "unit": "tokens",
         "amount": 500}]})
    refused = embed(capped, capped.key(), body)
    assert refused.status_code == 422 and google.fake.tally.requests == 0
    assert "inline data" in refused.json()["error"]["message"]
    open_gateway = make_gateway(gemini_upstream(google))
    assert embed(open_gateway, open_gateway.key(), body).status_code == 200
    [row] = open_gateway.rows()
    assert row.detail["hidden_input"]["sources"] == ["inline_data"]
    assert row.input_tokens == google.fake.tally.last.input_tokens  # type: ignore[union-attr]
