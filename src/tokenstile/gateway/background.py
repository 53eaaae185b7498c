"""Background responses (``background: true``): billed when they end, not when the request
that created them does.

The upstream answers such a request at once, ``queued`` and without usage, and generates
afterwards. The request then keeps its reservation (renewed like a live one) and writes no
ledger row; its entry in the database (``tokenstile.stores.responses``) is ``pending``,
owned under a lease by the gateway that polls the upstream for it: ``first_poll_s`` after
creation, then at doubling intervals. When the response is seen in a terminal state
(completed, failed, cancelled, incomplete), by the poller or by a client's ``GET`` or
cancel through any gateway, the one gateway that moves the entry to ``settled`` writes its
ledger row with the usage the response then reports and replaces the reservation.

A gateway that stops releases its leases; one that dies leaves them to run out, and
another gateway (or the same one restarted) adopts the entries. If crash recovery claimed
the reservation meanwhile, the row is still written here, with the real usage, and its
settle moves the counters from the estimate to it. A response that cannot be followed
(the upstream no longer knows it, ``max_wait_s`` passed) is charged at its estimate.

Every other Responses answer only leaves an entry saying who may reach it (``stored``),
written in batches off the request path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Protocol

import orjson

from tokenstile.errors import GatewayError
from tokenstile.gateway.upstream import response_url, upstream_headers
from tokenstile.providers.openai import usage_from_response
from tokenstile.providers.terms import reservation_terms, terms_of
from tokenstile.stores.counters import Charge
from tokenstile.stores.responses import StoredResponse
from tokenstile.types import LedgerRow, RequestContext, Ticket, Unit, Usage, set_usage

if TYPE_CHECKING:
    from tokenstile.clock import Clock
    from tokenstile.config import Config, UpstreamConfig
    from tokenstile.gateway.upstream import UpstreamClient
    from tokenstile.ledger import LedgerWriter
    from tokenstile.limits.admission import Admission
    from tokenstile.metrics import Metrics
    from tokenstile.prices import Pricer
    from tokenstile.stores.database import Database

log = logging.getLogger("tokenstile.background")

TERMINAL = frozenset({"completed", "failed", "cancelled", "incomplete"})
RUNNING = frozenset({"queued", "in_progress"})
# Stored responses are kept 30 days upstream; an entry that needs nothing more goes then.
KEEP_S = 30 * 86_400.0
PRUNE_EVERY_S = 3600.0
ROW_WAIT_S = 2.0
POLL_TIMEOUT_S = 30.0
SAVE_TIMEOUT_S = 5.0
POLLS_AT_ONCE = 16
# Entries waiting for the database (it is down); past this, the oldest that only say who may
# reach a response are dropped (those clients then get 404), never a pending one.
MAX_UNSAVED = 100_000
_OUTCOMES = {"completed": "ok", "incomplete": "ok", "failed": "upstream_error",
             "cancelled": "cancelled"}


class Follower(Protocol):
    """How to follow another kind of job billed when it ends (``gateway.batches``): where to
    ask about it, whether it has ended, what it used, and the ledger row that bills it."""

    max_wait_s: float

    def status_url(self, config: UpstreamConfig, job_id: str) -> str: ...

    def ended(self, body: dict[str, Any]) -> bool: ...

    async def outcome(self, entry: StoredResponse, config: UpstreamConfig,
                      body: dict[str, Any], provider_key: str | None
                      ) -> dict[str, Any] | None:
        """What an ended job used (None: it could not be read now; asked again later)."""
        ...

    def final_row(self, entry: StoredResponse, outcome: dict[str, Any] | None, how: str,
                  polls: int) -> tuple[LedgerRow, Usage]:
        """The job's one row (``outcome`` None: charged at its estimate)."""
        ...


@dataclass(slots=True)
class _Tracked:
    """A pending entry this gateway polls for."""

    entry: StoredResponse
    due: float  # clock.monotonic()
    delay: float
    polls: int = 0
    provider_key: str | None = None


class BackgroundResponses:
    def __init__(self, config: Config, pricer: Pricer, clock: Clock, db: Database,
                 ledger: LedgerWriter, metrics: Metrics, upstream: UpstreamClient,
                 admission: Admission) -> None:
        self.config = config
        self.pricer = pricer
        self.clock = clock
        self.db = db
        self.ledger = ledger
        self.metrics = metrics
        self.upstream = upstream
        self.admission = admission
        self.owner = "gw_" + secrets.token_hex(8)
        # Other kinds of jobs billed when they end, by ``record["kind"]`` (batches).
        self.followers: dict[str, Follower] = {}
        self._tracked: dict[str, _Tracked] = {}
        self._unsaved: dict[str, StoredResponse] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._wake: asyncio.Event | None = None
        self._upkeep_at = 0.0
        self._prune_at = 0.0

    def reconfigure(self, config: Config, pricer: Pricer) -> None:
        self.config, self.pricer = config, pricer

    @property
    def pending(self) -> int:
        """Background responses this gateway follows."""
        return len(self._tracked)

    # -- the request path -------------------------------------------------------------------

    async def register(self, ctx: RequestContext, response_id: object,
                       status: object) -> None:
        """A Responses answer with an id, before the client hears of it (streams: once the
        stream is over): remember who may reach it. A background one still running is
        saved as pending and followed from here; its request is then billed by this
        module (``ctx.background_running``)."""
        if not isinstance(response_id, str) or not response_id or ctx.caller is None \
                or ctx.upstream is None or ctx.response_id is not None:
            return
        ctx.response_id = response_id
        caller, now = ctx.caller, self.clock.now()
        if not (ctx.background and status in RUNNING):
            if len(self._unsaved) >= MAX_UNSAVED:
                self._drop_oldest_stored()
            self._unsaved[response_id] = StoredResponse(
                response_id, ctx.upstream, caller.organization, caller.project,
                caller.key_id, now)
            self._poke()
            return
        await self._start(ctx, self._pending_entry(ctx, response_id))

    async def follow(self, ctx: RequestContext, job_id: object, kind: str,
                     record: dict[str, Any]) -> None:
        """Another kind of job billed when it ends (a batch, ``self.followers[kind]``): its
        request keeps its reservation and is billed from here, like a background response;
        ``record`` is kept with it for its follower."""
        if not isinstance(job_id, str) or not job_id or ctx.upstream is None:
            return
        entry = self._pending_entry(ctx, job_id)
        entry.record.update(record, kind=kind)
        await self._start(ctx, entry)

    async def _start(self, ctx: RequestContext, entry: StoredResponse) -> None:
        await self.remember(entry)
        self._track(entry, ctx.provider_key, first=True)
        ctx.background_running = True

    async def remember(self, entry: StoredResponse) -> None:
        """Save an entry now (one a client may reach at once); while the database is down,
        it waits here and this gateway alone follows it."""
        try:
            await asyncio.wait_for(self.db.save_responses([entry]), SAVE_TIMEOUT_S)
        except Exception as exc:
            log.warning("%s is not saved yet (%s); retrying", entry.id, exc)
            self._unsaved[entry.id] = entry

    def _drop_oldest_stored(self) -> None:
        for response_id, item in self._unsaved.items():
            if item.state != "pending":
                del self._unsaved[response_id]
                log.error("too many responses wait for the database; %s is forgotten (its "
                          "creator can no longer reach it through the gateway)", response_id)
                return

    def _pending_entry(self, ctx: RequestContext, response_id: str) -> StoredResponse:
        req, caller = ctx.req, ctx.caller
        assert ctx.upstream is not None
        now = self.clock.now()
        inp = req.input_tokens + req.hidden_input_tokens
        cap = req.output_cap or 0
        model = ctx.served_model or req.model
        ticket = ctx.ticket
        held = None
        if ticket is not None and not ticket.settled:
            held = {"rid": ticket.rid, "metered": ticket.metered, "units": list(ticket.units),
                    "charges": [[c.key, c.amount, c.limit, c.ttl, list(c.window_keys)]
                                for c in ticket.charges]}
        upstream = self.config.upstreams.get(ctx.upstream)
        terms = reservation_terms(req, upstream.auto_service_tier if upstream else None)
        record = {
            "row": asdict(ctx.ledger_row(0.0)),
            "provider": ctx.provider,
            "asked_tier": terms_of(req).service_tier,
            "estimate": {"input_tokens": inp, "output_tokens": cap,
                         "cost_nano": self.pricer.estimate_nano(model, inp, cap, ctx.provider,
                                                              terms=terms) or 0},
            "ticket": held,
            "passthrough": ctx.provider_key is not None,
        }
        return StoredResponse(response_id, ctx.upstream, caller.organization, caller.project,
                              caller.key_id, now, state="pending", rid=ctx.id, record=record,
                              owner=self.owner,
                              lease_until=now + self.config.server.reservation_lease_s)

    def _track(self, entry: StoredResponse, provider_key: str | None, first: bool) -> None:
        settings = self.config.background_responses
        delay = settings.first_poll_s
        self._tracked[entry.id] = _Tracked(
            entry, self.clock.monotonic() + (delay if first else 0.0), delay,
            provider_key=provider_key)
        held = entry.record.get("ticket")
        if held and held.get("metered"):
            self.admission.leases.live.add(held["rid"])  # renewed until it is settled
        self._poke()

    # -- clients reaching a response --------------------------------------------------------

    async def lookup(self, response_id: str) -> StoredResponse | None:
        tracked = self._tracked.get(response_id)
        if tracked is not None:
            return tracked.entry
        unsaved = self._unsaved.get(response_id)
        if unsaved is not None:
            return unsaved
        return await self.db.get_response(response_id)

    async def observed(self, entry: StoredResponse, body: object,
                       provider_key: str | None) -> None:
        """A client saw the response (``GET``, cancel): when it has ended, settle it."""
        if entry.state != "pending" or not isinstance(body, dict):
            return
        tracked = self._tracked.get(entry.id)
        if tracked is not None and provider_key is not None:
            tracked.provider_key = provider_key
        entry = tracked.entry if tracked else entry
        follower = self.followers.get(entry.record.get("kind", ""))
        if follower is not None:
            config = self.config.upstreams.get(entry.upstream)
            if follower.ended(body) and config is not None:
                outcome = await follower.outcome(entry, config, body, provider_key)
                if outcome is not None:
                    await self._conclude(entry, outcome, "client")
            return
        if body.get("status") in TERMINAL:
            await self._conclude(entry, body, "client")

    # -- settling ---------------------------------------------------------------------------

    async def _conclude(self, entry: StoredResponse, body: dict[str, Any] | None,
                        how: str) -> None:
        """Write the one ledger row of a background response and replace its reservation;
        ``body`` is the response in its final state (None: charged at its estimate)."""
        unsaved = self._unsaved.get(entry.id)
        if unsaved is not None and unsaved.state == "pending":
            unsaved.state = "settled"  # saved as settled later, for who may reach it
            won = True
        else:
            try:
                won = await self.db.settle_response(entry.id)
            except Exception as exc:
                log.warning("settling background response %s waits for the database (%s)",
                            entry.id, exc)
                return  # followed again at its next poll
        tracked = self._tracked.pop(entry.id, None)
        entry.state = "settled"
        held = entry.record.get("ticket")
        if not won:
            if held:
                self.admission.leases.live.discard(held["rid"])
            return
        row, usage = self._final_row(entry, body, how, tracked.polls if tracked else 0)
        await self._write(row)
        if held:
            await self._settle_counters(row, usage, held)

    def _final_row(self, entry: StoredResponse, body: dict[str, Any] | None, how: str,
                   polls: int) -> tuple[LedgerRow, Usage]:
        follower = self.followers.get(entry.record.get("kind", ""))
        if follower is not None:
            return follower.final_row(entry, body, how, polls)
        record = entry.record
        row = LedgerRow(**record["row"])
        status = body.get("status") if body else None
        usage = usage_from_response("responses", body) if body else None
        flags = [f for f in row.flags if f != "charged_at_estimate"]
        if usage is None:
            estimate = record["estimate"]
            usage = Usage(input_tokens=estimate["input_tokens"],
                          output_tokens=estimate["output_tokens"])
            flags.append("charged_at_estimate")
        model = row.served_model or row.requested_model or ""
        cost = 0
        if "charged_at_estimate" in flags:
            cost = int(record["estimate"]["cost_nano"])  # as reserved: the worst case
        elif usage.total_tokens or usage.billable_calls:
            price = self.pricer.price_for(model, record.get("provider"))
            asked = record.get("asked_tier")
            if price is None:
                flags.append("unpriced_model")
            else:
                cost = price.cost_nano(usage, usage.service_tier or
                                       (None if asked == "auto" else asked))
        set_usage(row, usage)
        row.cost_nano, row.estimated = cost, "charged_at_estimate" in flags
        row.status, row.outcome = 200, _OUTCOMES.get(str(status), "unsettled")
        row.flags = flags
        row.latency_ms = round(max(0.0, self.clock.now() - row.ts) * 1000, 3)
        row.detail["background"] = {
            "response_id": entry.id, "status": status or how, "settled_by": how,
            "polls": polls}
        return row, usage

    async def _write(self, row: LedgerRow) -> None:
        """Submit the row and wait (a little) until it is written: the reservation is what
        bills the call if this gateway dies first."""
        self.metrics.observe(row)
        await self.ledger.submit_and_wait(row, ROW_WAIT_S)

    async def _settle_counters(self, row: LedgerRow, usage: Usage,
                               held: dict[str, Any]) -> None:
        units: list[Unit] = list(held["units"])
        ticket = Ticket(held["rid"], [Charge(key, amount, limit, ttl, tuple(keys))
                                      for key, amount, limit, ttl, keys in held["charges"]],
                        units, metered=bool(held["metered"]))
        try:
            await self.admission.settle(ticket, usage, row.cost_nano)
        except Exception:
            log.exception("settling the reservation of background response %s failed",
                          row.id)

    # -- crash recovery ---------------------------------------------------------------------

    def expired(self, row: LedgerRow) -> None:
        """Crash recovery claimed a background request's reservation: its row is written
        when its response ends, unless no entry follows it (then: at the estimate now)."""
        task = asyncio.ensure_future(self._expired(row))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _expired(self, row: LedgerRow) -> None:
        entry = next((t.entry for t in self._tracked.values() if t.entry.rid == row.id), None)
        if entry is None:
            try:
                entry = await self.db.response_by_rid(row.id)
            except Exception:
                entry = None
        if entry is not None and entry.state == "pending":
            log.info("background request %s outlived its reservation's lease; its row is "
                     "written when response %s ends", row.id, entry.id)
            return
        self.ledger.submit(row)

    # -- the poller -------------------------------------------------------------------------

    def _poke(self) -> None:
        if self._wake is not None:
            self._wake.set()

    async def run(self) -> None:
        """Until cancelled: save what waits, keep leases, adopt orphans, poll what is due."""
        self._wake = asyncio.Event()
        while True:
            try:
                await self.step()
            except Exception:
                log.exception("the background response poller failed a round")
            await self._sleep()

    async def step(self) -> None:
        if self._unsaved:
            await self._flush()
        if self.clock.monotonic() >= self._upkeep_at:
            self._upkeep_at = self.clock.monotonic() + max(0.2, self.config.server
                                                         .reservation_lease_s / 3)
            try:
                await self._upkeep()
            except Exception as exc:  # the database is down: keep polling meanwhile
                log.warning("background responses: lease upkeep failed (%s)", exc)
        now = self.clock.monotonic()
        due = [t for t in self._tracked.values() if t.due <= now]
        for start in range(0, len(due), POLLS_AT_ONCE):
            await asyncio.gather(*(self._poll(t) for t in due[start:start + POLLS_AT_ONCE]))

    async def _sleep(self) -> None:
        assert self._wake is not None
        now = self.clock.monotonic()
        wake_at = min([self._upkeep_at, *(t.due for t in self._tracked.values())])
        self._wake.clear()
        # asyncio.timeout, not wait_for: on Python 3.11, wait_for swallows a cancellation
        # that arrives as the event is set (a poke just before stop()), and run() would
        # then never end.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(min(1.0, max(0.01, wake_at - now))):
                await self._wake.wait()

    async def _flush(self) -> None:
        items = list(self._unsaved.values())
        try:
            await self.db.save_responses(items)
        except Exception as exc:
            log.debug("saving %d responses waits for the database: %s", len(items), exc)
            return
        for item in items:
            if self._unsaved.get(item.id) is item:
                del self._unsaved[item.id]

    async def _upkeep(self) -> None:
        now = self.clock.now()
        lease_until = now + self.config.server.reservation_lease_s
        mine = [i for i in self._tracked if i not in self._unsaved]
        kept = set(await self.db.renew_responses(self.owner, mine, lease_until))
        for lost in set(mine) - kept:  # settled through another gateway, or adopted by it
            tracked = self._tracked.pop(lost)
            held = tracked.entry.record.get("ticket")
            if held:
                self.admission.leases.live.discard(held["rid"])
        for entry in await self.db.adopt_responses(self.owner, now, lease_until):
            if entry.id not in self._tracked:
                log.info("following background response %s, left by %s", entry.id,
                         entry.owner)
                self._track(entry, None, first=False)
        if now >= self._prune_at:
            self._prune_at = now + PRUNE_EVERY_S
            await self.db.prune_responses(now - KEEP_S)

    async def _poll(self, tracked: _Tracked) -> None:
        entry = tracked.entry
        settings = self.config.background_responses
        follower = self.followers.get(entry.record.get("kind", ""))
        max_wait = follower.max_wait_s if follower is not None else settings.max_wait_s
        if self.clock.now() - entry.created_at >= max_wait:
            await self._conclude(entry, None, "max_wait")
            return
        tracked.delay = min(tracked.delay * 2, settings.max_poll_interval_s)
        tracked.due = self.clock.monotonic() + tracked.delay
        config = self.config.upstreams.get(entry.upstream)
        if config is None or (entry.record.get("passthrough") and tracked.provider_key is None):
            return  # no way to ask: a client's GET, or max_wait_s, settles it
        tracked.polls += 1
        url = follower.status_url(config, entry.id) if follower is not None \
            else response_url(config, entry.id)
        try:
            resp = await self.upstream.request(
                "GET", entry.upstream, config, url,
                upstream_headers(config, {}, tracked.provider_key), timeout_s=POLL_TIMEOUT_S)
            try:
                status, payload = resp.status, await resp.read()
            finally:
                resp.release()
        except (GatewayError, OSError, TimeoutError) as exc:
            log.debug("polling background response %s failed: %s", entry.id, exc)
            return
        if status == 404:
            log.warning("upstream %r no longer knows background response %s; charged at its "
                        "estimate", entry.upstream, entry.id)
            await self._conclude(entry, None, "not_found")
            return
        try:
            body = orjson.loads(payload) if status == 200 else None
        except orjson.JSONDecodeError:
            body = None
        if follower is not None and isinstance(body, dict) and follower.ended(body):
            outcome = await follower.outcome(entry, config, body, tracked.provider_key)
            if outcome is not None:  # else: asked again at the next poll
                await self._conclude(entry, outcome, "poller")
        elif isinstance(body, dict) and body.get("status") in TERMINAL:
            await self._conclude(entry, body, "poller")

    async def close(self) -> None:
        """Save what waits and hand this gateway's entries over at once."""
        for task in list(self._tasks):
            with contextlib.suppress(Exception):
                await task
        with contextlib.suppress(Exception):
            if self._unsaved:
                await self._flush()
            await self.db.release_responses(self.owner)
