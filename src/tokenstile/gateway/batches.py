"""The Batch API: input files read and counted on upload, batches reserved at the worst case
of every line when they are created and billed from their output file when they end.

- ``POST /v1/files`` (``purpose: batch``): every line is parsed and counted, lines without
  an output cap get one (``providers.batch_files``); the upload costs nothing. Once the
  upstream has the file, the gateway remembers it (in the ``responses`` table, as it does
  responses): which organization and project may use it, on which upstream, and what its
  lines may use.
- ``POST /v1/batches``: reserved, like any call, at its worst case: every line's input and
  output cap at half the model's standard price (the batch discount), on the upstream that
  holds the file. The upstream answers at once (``validating``): the request then keeps its
  reservation and writes no row; the batch is followed as a background response is
  (``gateway.background``: a pending entry owned under a lease, polled at doubling
  intervals, adopted by another gateway if this one dies, settled once by whoever sees it
  end first, a client's ``GET /v1/batches/{id}`` included).
- When it has ended (completed, failed, expired, cancelled), its output file is read line by
  line: each answered line is priced at the batch price from its own usage, and the batch's
  one ledger row (``detail.batch``) carries the sum; the reservation becomes that cost. A
  batch still unfinished after ``MAX_WAIT_S`` is charged at its estimate.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import orjson

from tokenstile.errors import GatewayError, bad_request
from tokenstile.gateway.upstream import resource_url, upstream_headers
from tokenstile.gateway.upstream_response import BODY_ERRORS, UpstreamResponse
from tokenstile.hidden_input import HiddenInput
from tokenstile.media import BatchLines, batch_price
from tokenstile.providers.answers import answer_text
from tokenstile.providers.batch_files import ENDPOINTS, parse_create, parse_upload
from tokenstile.providers.openai import usage_from_response
from tokenstile.stores.counters import StoreUnavailable
from tokenstile.stores.responses import StoredResponse
from tokenstile.types import Caller, CanonicalRequest, LedgerRow, RequestContext, Usage, set_usage

if TYPE_CHECKING:
    from tokenstile.config import Config, UpstreamConfig
    from tokenstile.gateway.background import BackgroundResponses
    from tokenstile.gateway.upstream import UpstreamClient
    from tokenstile.prices import Pricer
    from tokenstile.providers.base import Adapter
    from tokenstile.providers.multipart import FilePart

log = logging.getLogger("tokenstile.batches")

ENDED = frozenset({"completed", "failed", "expired", "cancelled"})
_OUTCOMES = {"completed": "ok", "failed": "upstream_error", "expired": "expired",
             "cancelled": "cancelled"}
# A batch runs within its 24-hour completion window; one not ended after twice that is
# charged at its estimate.
MAX_WAIT_S = 2 * 86_400.0
OUTPUT_TIMEOUT_S = 300.0


class Batches:
    """Batch files and batches on the request path, and a ``Follower`` of running batches
    for ``BackgroundResponses``."""

    max_wait_s = MAX_WAIT_S

    def __init__(self, config: Config, pricer: Pricer, adapter: Adapter,
                 background: BackgroundResponses, upstream: UpstreamClient) -> None:
        self.adapter = adapter
        self.background = background
        self.upstream = upstream
        self.reconfigure(config, pricer)
        background.followers["batch"] = self

    def reconfigure(self, config: Config, pricer: Pricer) -> None:
        self.config, self.pricer = config, pricer
        self.hidden = HiddenInput(config.hidden_input, pricer)

    # -- intake -----------------------------------------------------------------------------

    def parse_upload(self, fields: dict[str, Any],
                     files: tuple[FilePart, ...]) -> CanonicalRequest:
        return parse_upload(fields, files, self.adapter,
                            self.config.server.default_output_tokens, self._worst_input)

    def _worst_input(self, req: CanonicalRequest, counted: int) -> int:
        """A line's input as a reservation holds it: what it could not count at its worst."""
        return self.hidden.worst_case(req.model, counted).tokens if req.hidden_input \
            else counted

    async def parse_create(self, body: dict[str, Any], caller: Caller) -> CanonicalRequest:
        """A batch over a file uploaded through the gateway by the caller's project."""
        file_id = body.get("input_file_id")
        if not isinstance(file_id, str) or not file_id:
            raise bad_request("'input_file_id' is required", param="input_file_id",
                              code="missing_required_parameter")
        try:
            entry = await self.background.lookup(file_id)
        except StoreUnavailable:
            raise GatewayError(503, "the database that knows the uploaded files is "
                               "unreachable; try again shortly", type="api_error",
                               code="database_unavailable", headers={"retry-after": "2"}
                               ) from None
        if entry is None or entry.record.get("kind") != "file" or \
                entry.organization != caller.organization or entry.project != caller.project:
            raise GatewayError(404, f"no batch input file {file_id!r} was uploaded through "
                               f"this gateway for project {caller.project!r}",
                               code="file_not_found", param="input_file_id")
        record = entry.record
        return parse_create(body, str(record["model"]), entry.upstream,
                            BatchLines(**record["lines"]))

    # -- relay ------------------------------------------------------------------------------

    async def answered(self, ctx: RequestContext, parsed: Any) -> None:
        """A file upload or a batch the upstream accepted, before the client hears of it."""
        if not isinstance(parsed, dict) or ctx.upstream is None:
            return
        ask = ctx.req.media
        if ask is None or ask.batch is None:
            return
        if ctx.api == "batches":
            await self.background.follow(ctx, parsed.get("id"), "batch",
                                         {"lines": asdict(ask.batch)})
            return
        file_id = parsed.get("id")
        if isinstance(file_id, str) and file_id:
            caller = ctx.caller
            await self.background.remember(StoredResponse(
                file_id, ctx.upstream, caller.organization, caller.project, caller.key_id,
                ctx.ts, record={"kind": "file", "model": ctx.served_model or ctx.req.model,
                                "lines": asdict(ask.batch)}))

    # -- following a batch (a ``background.Follower``) ---------------------------------------

    def status_url(self, config: UpstreamConfig, job_id: str) -> str:
        return resource_url(config, "batches", job_id)

    def ended(self, body: dict[str, Any]) -> bool:
        return body.get("status") in ENDED

    async def outcome(self, entry: StoredResponse, config: UpstreamConfig,
                      body: dict[str, Any], provider_key: str | None
                      ) -> dict[str, Any] | None:
        """Read the output file of an ended batch and price every answered line."""
        record = entry.record
        row = record["row"]
        model = str(row.get("served_model") or row.get("requested_model") or "")
        price = batch_price(self.pricer, model, record.get("provider"))
        lines = record.get("lines") or {}
        api = ENDPOINTS.get(str(lines.get("endpoint")), "chat")
        summary: dict[str, Any] = {
            "status": body.get("status"), "output_file_id": body.get("output_file_id"),
            "error_file_id": body.get("error_file_id"), "answered": 0, "estimated": False,
            "cost_nano": 0, "usage": asdict(Usage()), "unpriced": price is None}
        for key in ("output_file_id", "error_file_id"):
            await self.share(entry, body.get(key))
        file_id = body.get("output_file_id")
        if not isinstance(file_id, str) or not file_id:
            return summary
        try:
            resp = await self.upstream.request(
                "GET", entry.upstream, config, resource_url(config, "files", file_id,
                                                            "content"),
                upstream_headers(config, {}, provider_key), timeout_s=OUTPUT_TIMEOUT_S)
        except (GatewayError, OSError, TimeoutError) as exc:
            log.debug("reading the output of batch %s failed: %s", entry.id, exc)
            return None
        try:
            if resp.status != 200:
                return None
            total, cost, answered, estimated = Usage(), 0, 0, False
            per_line_input = int(lines.get("input_tokens", 0)) // max(
                int(lines.get("lines", 1)), 1)
            async for line in _lines(resp):
                usage, guessed = _line_usage(api, model, line, per_line_input)
                if usage is None:
                    continue
                answered += 1
                estimated = estimated or guessed
                total.add(usage)
                cost += price.cost_nano(usage) if price is not None else 0
        except BODY_ERRORS as exc:
            log.debug("reading the output of batch %s broke off: %s", entry.id, exc)
            return None
        finally:
            resp.release()
        summary.update(answered=answered, estimated=estimated, cost_nano=cost,
                       usage=asdict(total))
        return summary

    async def share(self, entry: StoredResponse, file_id: Any) -> None:
        """A batch's output and error files may be read by whoever may read the batch."""
        if not isinstance(file_id, str) or not file_id:
            return
        try:
            if await self.background.lookup(file_id) is not None:
                return
        except Exception:
            return
        await self.background.remember(StoredResponse(
            file_id, entry.upstream, entry.organization, entry.project, entry.key_id,
            entry.created_at, record={"kind": "output", "batch": entry.id}))

    def final_row(self, entry: StoredResponse, outcome: dict[str, Any] | None, how: str,
                  polls: int) -> tuple[LedgerRow, Usage]:
        record = entry.record
        row = LedgerRow(**record["row"])
        row.detail.pop("background", None)
        endpoint = (record.get("lines") or {}).get("endpoint")
        flags = [f for f in row.flags if f != "charged_at_estimate"]
        if outcome is None:
            estimate = record["estimate"]
            usage = Usage(input_tokens=estimate["input_tokens"],
                          output_tokens=estimate["output_tokens"])
            cost, status = int(estimate["cost_nano"]), None
            flags.append("charged_at_estimate")
        else:
            usage = Usage(**outcome["usage"])
            cost, status = int(outcome["cost_nano"]), outcome["status"]
            if outcome["unpriced"] and usage.total_tokens:
                flags.append("unpriced_model")
        set_usage(row, usage)
        row.cost_nano = cost
        row.estimated = outcome is None or bool(outcome["estimated"])
        row.status, row.outcome = 200, _OUTCOMES.get(str(status), "unsettled")
        row.flags = flags
        row.latency_ms = round(max(0.0, self.background.clock.now() - row.ts) * 1000, 3)
        detail: dict[str, Any] = {"id": entry.id, "status": status or how,
                                  "settled_by": how, "polls": polls,
                                  "discount": "batch (50% of the standard prices)"}
        if endpoint:
            detail["endpoint"] = endpoint
        if outcome is not None:
            detail.update(answered=outcome["answered"],
                          output_file_id=outcome["output_file_id"],
                          error_file_id=outcome["error_file_id"])
        row.detail["batch"] = detail
        return row, usage


async def _lines(resp: UpstreamResponse) -> AsyncIterator[Any]:
    """The JSON objects of a JSONL body, read as it arrives (lines of any length)."""
    rest = b""
    async for chunk in resp.content.iter_any():
        rest += chunk
        *complete, rest = rest.split(b"\n")
        for raw in complete:
            if raw.strip():
                yield _loads(raw)
        await asyncio.sleep(0)
    if rest.strip():
        yield _loads(rest)


def _loads(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None


def _line_usage(api: Any, model: str, line: Any, per_line_input: int
                ) -> tuple[Usage | None, bool]:
    """What one output line used (None: it was not answered), and whether that is the
    gateway's own count (the answer had no usage)."""
    response = line.get("response") if isinstance(line, dict) else None
    if not isinstance(response, dict) or response.get("status_code") != 200:
        return None, False
    body = response.get("body")
    if not isinstance(body, dict):
        return None, False
    usage = usage_from_response(api, body)
    if usage is not None:
        return usage, False
    output, reasoning = answer_text(api, body).count(model)
    return Usage(input_tokens=per_line_input, output_tokens=output,
                 reasoning_tokens=reasoning), True

