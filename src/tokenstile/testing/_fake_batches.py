"""The fake upstream's Files and Batch APIs (OpenAI's shapes).

``POST /v1/files`` (a form) keeps the file; ``GET /v1/files/{id}`` and ``…/content`` give it
back, ``DELETE`` forgets it. ``POST /v1/batches`` starts a batch ``validating`` over an input
file; it runs until the test says (``FakeUpstream.finish_batch``): each line of the input is
then answered (chat completions with the fake's exact usage: the prompt counted as the
chat route counts it, ``output_tokens`` directive or the default reply, cut at the line's
cap; embeddings: the input counted), into an output file of OpenAI's batch output lines. A
line whose last user text says ``[[fake:status=500]]`` fails (into the error file). Every
answered line is recorded in the tally (method ``BATCH``), which is what the provider bills.
``GET /v1/batches/{id}`` and ``POST …/cancel`` work as OpenAI's do.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from ._fake_core import (
    count_format,
    count_messages,
    count_prompt,
    count_tools,
    last_user_text,
    parse_directives,
    reply_text,
)
from ._fake_http import FakeHost, _Req
from ._fake_media import send_bytes
from ._fake_state import FakeRecord, Tally


class _Host(FakeHost, Protocol):
    """The fake upstream, with the files and batches it keeps."""

    tally: Tally
    batches: FakeBatches

Json = dict[str, Any]
_ids = itertools.count(1)


@dataclass
class FakeFile:
    id: str
    filename: str
    purpose: str
    content: bytes
    created_at: int = field(default_factory=lambda: int(time.time()))

    def obj(self) -> Json:
        return {"id": self.id, "object": "file", "bytes": len(self.content),
                "created_at": self.created_at, "filename": self.filename,
                "purpose": self.purpose, "status": "processed", "expires_at": None,
                "status_details": None}


@dataclass
class FakeBatch:
    id: str
    input_file_id: str
    endpoint: str
    completion_window: str
    metadata: Any
    status: str = "validating"
    output_file_id: str | None = None
    error_file_id: str | None = None
    counts: dict[str, int] = field(default_factory=lambda: {"total": 0, "completed": 0,
                                                            "failed": 0})
    created_at: int = field(default_factory=lambda: int(time.time()))

    def obj(self) -> Json:
        return {"id": self.id, "object": "batch", "endpoint": self.endpoint, "errors": None,
                "input_file_id": self.input_file_id,
                "completion_window": self.completion_window, "status": self.status,
                "output_file_id": self.output_file_id, "error_file_id": self.error_file_id,
                "created_at": self.created_at, "in_progress_at": None, "expires_at": None,
                "finalizing_at": None, "completed_at": None, "failed_at": None,
                "expired_at": None, "cancelling_at": None, "cancelled_at": None,
                "request_counts": dict(self.counts), "metadata": self.metadata}


class FakeBatches:
    """Files and batches the fake keeps (cleared by ``FakeUpstream.reset``)."""

    def __init__(self) -> None:
        self.files: dict[str, FakeFile] = {}
        self.batches: dict[str, FakeBatch] = {}

    def clear(self) -> None:
        self.files.clear()
        self.batches.clear()

    def add_file(self, filename: str, purpose: str, content: bytes) -> FakeFile:
        item = FakeFile(f"file-fake{next(_ids):08d}", filename, purpose, content)
        self.files[item.id] = item
        return item


def _line_answer(fake: _Host, endpoint: str, body: Json, rid: str
                 ) -> tuple[int, Json, int, int]:
    """(status, answer body, input tokens, output tokens) of one batch line."""
    model = str(body.get("model", ""))
    text = last_user_text(body.get("messages")) if endpoint.endswith("/chat/completions") \
        else ""
    directives = parse_directives(text) if "[[fake:" in text else {}
    status = directives.get("status")
    if isinstance(status, int) and status >= 400:
        return status, {"error": {"message": f"Fake upstream error (status {status}).",
                                  "type": "server_error"}}, 0, 0
    if endpoint.endswith("/embeddings"):
        tokens = count_prompt(body.get("input"))
        return 200, {"object": "list", "model": model, "data": [],
                     "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}, tokens, 0
    prompt = count_messages(body.get("messages")) + count_tools(body.get("tools")) + \
        count_format(body.get("response_format"))
    wanted = directives.get("output_tokens")
    natural = wanted if isinstance(wanted, int) else fake.settings.default_output_tokens
    cap = next((v for k in ("max_completion_tokens", "max_tokens")
                if isinstance(v := body.get(k), int)), None)
    out = natural if cap is None else min(natural, cap)
    return 200, {
        "id": f"chatcmpl-{rid}", "object": "chat.completion", "created": int(time.time()),
        "model": model, "service_tier": "default",
        "choices": [{"index": 0, "finish_reason": "length" if out < natural else "stop",
                     "logprobs": None, "message": {"role": "assistant",
                                                   "content": reply_text(out)}}],
        "usage": {"prompt_tokens": prompt, "completion_tokens": out,
                  "total_tokens": prompt + out,
                  "prompt_tokens_details": {"cached_tokens": 0},
                  "completion_tokens_details": {"reasoning_tokens": 0}}}, prompt, out


def finish(fake: _Host, batch_id: str, status: str = "completed",
           lines: int | None = None) -> list[FakeRecord]:
    """End a batch: its first ``lines`` lines (all by default) are answered (unless it
    failed), the output and error files written; returns the tally records of the lines."""
    store = fake.batches
    batch = store.batches[batch_id]
    source = store.files[batch.input_file_id].content.splitlines()
    answered = [] if status == "failed" else source[:lines]
    outputs: list[bytes] = []
    errors: list[bytes] = []
    records: list[FakeRecord] = []
    for raw in answered:
        if not raw.strip():
            continue
        item = orjson.loads(raw)
        rid = f"batch_req_fake{next(_ids):08d}"
        code, body, inp, out = _line_answer(fake, batch.endpoint, item["body"], rid)
        line = {"id": rid, "custom_id": item.get("custom_id"),
                "response": {"status_code": code, "request_id": rid, "body": body},
                "error": None}
        (outputs if code == 200 else errors).append(orjson.dumps(line))
        if code == 200:
            record = FakeRecord(request_id=rid, route=batch.endpoint, method="BATCH",
                                model=str(item["body"].get("model", "")), stream=False,
                                status=200, outcome="completed", input_tokens=inp,
                                output_tokens=out, started_at=time.time())
            fake.tally.begin()
            fake.tally.add(record)
            records.append(record)
    if outputs:
        batch.output_file_id = store.add_file("output.jsonl", "batch_output",
                                              b"\n".join(outputs) + b"\n").id
    if errors:
        batch.error_file_id = store.add_file("errors.jsonl", "batch_output",
                                             b"\n".join(errors) + b"\n").id
    batch.counts = {"total": len(source), "completed": len(outputs), "failed": len(errors)}
    batch.status = status
    return records


async def upload(fake: _Host, r: _Req) -> None:
    part = next((p for p in r.files if p.name == "file"), None)
    purpose = r.body.get("purpose") if isinstance(r.body, dict) else None
    if part is None or not isinstance(purpose, str):
        await fake._error(r, 400, "Missing required parameter: 'file' or 'purpose'.")
        return
    item = fake.batches.add_file(part.filename, purpose, part.data)
    fake._record(r, 200, "completed")
    await fake._send_json(r, 200, item.obj())


async def create(fake: _Host, r: _Req) -> None:
    body = r.body
    source = fake.batches.files.get(str(body.get("input_file_id")))
    if source is None:
        await fake._error(r, 404, f"No such File object: {body.get('input_file_id')}")
        return
    batch = FakeBatch(f"batch_fake{next(_ids):08d}", source.id, str(body.get("endpoint")),
                      str(body.get("completion_window", "24h")), body.get("metadata"))
    fake.batches.batches[batch.id] = batch
    fake._record(r, 200, "completed")
    await fake._send_json(r, 200, batch.obj())


async def resource(fake: _Host, r: _Req) -> None:
    """``GET/DELETE /v1/files/{id}[/content]``, ``GET /v1/batches/{id}``, ``POST …/cancel``."""
    parts = r.route.strip("/").split("/")  # v1, files|batches, id[, action]
    kind, item_id = parts[1], parts[2] if len(parts) > 2 else ""
    action = parts[3] if len(parts) > 3 else ""
    store = fake.batches
    if kind == "files" and item_id in store.files:
        item = store.files[item_id]
        fake._record(r, 200, "completed")
        if r.method == "GET" and action == "content":
            await send_bytes(r, 200, item.content, "application/octet-stream")
        elif r.method == "DELETE" and not action:
            del store.files[item_id]
            await fake._send_json(r, 200, {"id": item_id, "object": "file", "deleted": True})
        else:
            await fake._send_json(r, 200, item.obj())
        return
    if kind == "batches" and item_id in store.batches:
        batch = store.batches[item_id]
        if r.method == "POST" and action == "cancel" and batch.status in ("validating",
                                                                          "in_progress"):
            batch.status = "cancelling"
        fake._record(r, 200, "completed")
        await fake._send_json(r, 200, batch.obj())
        return
    await fake._error(r, 404, f"No such object: {item_id}")
