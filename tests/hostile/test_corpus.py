"""The malformed-request corpus (``corpus/``) replayed against a running gateway on every
proxy route.

``corpus/bad-*`` are bodies no route accepts: each must get a clear 4xx in the route's
provider shape. ``corpus/odd-*`` are strange but valid JSON (zero-width and RTL text,
escaped NULs, duplicate keys): served or refused, never a 5xx. ``corpus/http/*.http`` are
whole requests (chunked-encoding tricks, conflicting lengths, folded headers, other content
types) with ``{PATH}``, ``{AUTH}``, ``{LEN}``, ``{VALID}`` filled in; ``bad-`` ones must be
refused, ``ok-`` ones served. A few entries are too big to keep as files and are made
here: 10,000 messages, 100,000 nested arrays, a body past ``max_body_bytes``.

Afterwards the process is alive, the fake upstream saw only the requests that were served,
the ledger has rows only for authenticated requests and bills exactly what was served, and
the budget counter equals the ledger.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.chaos.procs import cli
from tests.conftest import FakeHandle
from tests.hostile.conftest import Served, error_of, exchange, request_bytes
from tokenstile.app import PROXY_ROUTES

CORPUS = Path(__file__).resolve().parent / "corpus"
HI = [{"role": "user", "content": "hi"}]
VALID: dict[str, dict[str, Any]] = {
    "/v1/chat/completions": {"model": "gpt-4o-mini", "max_tokens": 5, "messages": HI},
    "/v1/completions": {"model": "gpt-3.5-turbo-instruct", "max_tokens": 5, "prompt": "hi"},
    "/v1/embeddings": {"model": "text-embedding-3-small", "input": "hi"},
    "/v1/responses": {"model": "gpt-4o-mini", "max_output_tokens": 16, "input": "hi"},
    "/v1/messages": {"model": "claude-haiku-4-5", "max_tokens": 5, "messages": HI},
    "/v1/messages/count_tokens": {"model": "claude-haiku-4-5", "messages": HI},
    "/v1/moderations": {"input": "hi"},
    "/v1/images/generations": {"model": "dall-e-2", "prompt": "hi"},
    "/v1/audio/speech": {"model": "tts-1", "voice": "alloy", "input": "hi"},
}
ROUTES = sorted(PROXY_ROUTES)
# Routes whose valid body is a form or names an uploaded file: the JSON templates of
# ``corpus/http`` can only be refused there.
NO_JSON_VALID = {path for path in ROUTES if path not in VALID}
# Bodies valid on some routes by those APIs' own rules.
VALID_THERE = {"bad-model-missing.json": {"/v1/moderations", "/v1/images/generations"}}


def generated() -> Iterator[tuple[str, bytes]]:
    many = [{"role": "user", "content": "hi"}] * 10_000
    yield "bad-10k-messages.json", orjson.dumps(
        {"model": "gpt-4o-mini", "max_tokens": 5, "messages": many, "input": many,
         "prompt": ["hi"] * 10_000})
    yield "bad-deep-arrays.json", b'{"model": "gpt-4o-mini", "messages": ' + \
        b"[" * 100_000 + b"]" * 100_000 + b"}"
    yield "bad-too-large.json", b'{"model": "gpt-4o-mini", "messages": [{"role": "user", ' \
        b'"content": "' + "ü".encode() * 200_000 + b'"}]}'


def bodies() -> list[tuple[str, bytes]]:
    files = [(p.name, p.read_bytes()) for p in sorted(CORPUS.iterdir()) if p.is_file()]
    return files + list(generated())


def fill(template: str, path: str, auth: str) -> bytes:
    valid = orjson.dumps(VALID.get(path, VALID["/v1/chat/completions"]))
    chunked = "".join(f"1\n{chr(b)}\n" for b in valid)
    ext = f"{len(valid) // 2:x};name=value\n{valid[:len(valid) // 2].decode()}\n" \
          f"{len(valid) - len(valid) // 2:x}\n{valid[len(valid) // 2:].decode()}\n"
    text = template.replace("{PATH}", path).replace("{AUTH}", auth) \
        .replace("{CHUNKED_VALID}", chunked).replace("{CHUNKED_EXT}", ext)
    head, _, body = text.partition("\n\n")
    body = body.replace("{VALID}", valid.decode())
    raw_body = body.replace("\n", "\r\n").encode()
    head = head.replace("{LEN}", str(len(raw_body)))
    return head.replace("\n", "\r\n").encode() + b"\r\n\r\n" + raw_body


def wire_of(path: str) -> str:
    return "anthropic" if path.startswith("/v1/messages") else "openai"


def check(name: str, path: str, status: int, body: bytes, served_ok: list[str]) -> None:
    assert status != 0, f"{name} on {path}: no answer"
    assert status < 500, f"{name} on {path}: {status} {body[:300]!r}"
    if path in VALID_THERE.get(name, ()):
        pass  # served or refused
    elif name.startswith("ok-") and path in NO_JSON_VALID:
        assert 400 <= status < 500, f"{name} on {path}: {status} {body[:300]!r}"
    elif name.startswith("ok-"):
        assert status == 200, f"{name} on {path}: {status} {body[:300]!r}"
    elif name.startswith("bad-"):
        assert 400 <= status < 500, f"{name} on {path}: {status} {body[:300]!r}"
    if status >= 400:
        error_of(wire_of(path), body)
    else:
        served_ok.append(f"{name} {path}")


def budget_used(served: Served) -> int:
    budgets = orjson.loads(cli(served.proc.config_path, "budgets", "--json"))
    [mine] = [b for b in budgets if b["name"] == "projects.hostile.daily_limit"]
    return int(mine["used"])


@pytest.mark.parametrize("authenticated", [True, False], ids=["with-key", "without-key"])
def test_the_corpus_on_every_route(served: Served, fake: FakeHandle,
                                   authenticated: bool) -> None:
    auth = f"authorization: Bearer {served.key}" if authenticated else "x-nothing: 1"
    headers = {"authorization": f"Bearer {served.key}"} if authenticated else {}
    rows_before = len(served.rows())
    answered = 0
    served_ok: list[str] = []
    for path in ROUTES:
        for name, body in bodies():
            _, status, _, out = exchange(served.port, request_bytes(path, body, headers))
            if not authenticated and status not in (413, 415):
                assert status == 401, f"{name} on {path} without a key: {status}"
            check(name, path, status, out, served_ok)
            answered += 1
        for template in sorted((CORPUS / "http").glob("*.http")):
            raw = fill(template.read_text(), path, auth)
            _, status, _, out = exchange(served.port, raw)
            if not authenticated and template.name.startswith("ok-") and \
                    path not in NO_JSON_VALID:
                assert status == 401
                continue
            check(template.name, path, status, out, served_ok)
            answered += 1
    assert answered > 250
    # still serving
    _, status, _, _ = exchange(served.port, request_bytes(
        "/v1/chat/completions", orjson.dumps(VALID["/v1/chat/completions"]),
        {"authorization": f"Bearer {served.key}"}))
    assert status == 200
    served_ok.append("final")
    time.sleep(0.5)
    rows = served.rows()[: len(served.rows()) - rows_before]
    if not authenticated:
        assert len(rows) == 1  # only the final, authenticated request
    assert all(r.project == "hostile" and r.key_id for r in rows)  # authenticated only
    billed = [r for r in rows if r.input_tokens or r.output_tokens]
    assert {r.status for r in billed} == {200}
    assert len(fake.fake.tally.records) == len(served_ok)
    assert sum(r.input_tokens + r.output_tokens for r in rows) == \
        fake.fake.tally.input_tokens + fake.fake.tally.output_tokens
    assert budget_used(served) == sum(r.input_tokens + r.output_tokens for r in
                                      served.rows() if r.outcome == "ok")
