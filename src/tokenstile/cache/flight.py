"""Single flight: identical cache misses in flight at the same time go upstream once.

The first request to miss on a key leads: it goes upstream, and once its answer is stored
(or it ended without one) it lands the flight. Identical requests that miss meanwhile wait
for that instead of going upstream too, then read the cache again: they are served as hits,
for free, and only the leader is billed. If the leader left no answer (an error, an answer
cut by its output cap, a refusal), one of them leads next.

Within a process the followers wait on the leader's event. Across processes the leader
takes a short lock in the cache store (``SET NX PX`` in Redis, a row in SQLite); the leader
of another process that finds it taken polls the cache until the answer appears or the lock
is free (then it leads). Nobody waits longer than ``wait_s``, which is also the lock's
lifetime: past it, a request goes upstream on its own, as without single flight. A cache
store that fails never makes anyone wait.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from tokenstile.cache.answer import CachedAnswer
from tokenstile.cache.store import GuardedCache

Read = Callable[[], Awaitable[CachedAnswer | None]]

FIRST_POLL_S = 0.02
MAX_POLL_S = 0.25


@dataclass(slots=True)
class Flight:
    """A miss being answered upstream by one request, in ``owner``; ``token`` is the
    cross-process lock it holds, if it took one."""

    owner: SingleFlight
    key: str
    token: str | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)


class SingleFlight:
    def __init__(self, cache: GuardedCache, wait_s: float) -> None:
        self.cache = cache
        self.wait_s = wait_s
        self._flights: dict[str, Flight] = {}

    @property
    def in_flight(self) -> int:
        return len(self._flights)

    async def miss(self, key: str, read: Read) -> tuple[CachedAnswer | None, Flight | None]:
        """After a miss on ``key``: the answer an identical request in flight stored (a hit),
        or no answer and the flight this request now leads (it goes upstream, then
        ``land``s it), or neither when it waited ``wait_s`` in vain."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.wait_s
        while (current := self._flights.get(key)) is not None:
            try:
                async with asyncio.timeout_at(deadline):
                    await current.done.wait()
            except TimeoutError:
                return None, None
            answer = await read()
            if answer is not None:
                return answer, None
        flight = self._flights[key] = Flight(self, key)
        try:
            answer = await self._lead_across_processes(flight, read, deadline)
        except BaseException:
            await self.land(flight)
            raise
        if answer is not None:
            await self.land(flight)  # the followers here read it too (and the lock goes)
            return answer, None
        return None, flight

    async def _lead_across_processes(self, flight: Flight, read: Read,
                                     deadline: float) -> CachedAnswer | None:
        """Take the store's lock, or wait for the answer of the process that holds it."""
        loop = asyncio.get_running_loop()
        token = secrets.token_hex(8)
        delay = FIRST_POLL_S
        waited = False
        while True:
            if await self.cache.lock(flight.key, token, self.wait_s):
                flight.token = token
                # The holder may have stored its answer just before it let go.
                return await read() if waited else None
            left = deadline - loop.time()
            if left <= 0:
                return None
            await asyncio.sleep(min(delay, left))
            waited = True
            delay = min(delay * 1.5, MAX_POLL_S)
            answer = await read()
            if answer is not None:
                return answer

    async def land(self, flight: Flight) -> None:
        """The leader is done (its answer stored, or none to store): release the lock and
        wake the followers."""
        if self._flights.get(flight.key) is flight:
            del self._flights[flight.key]
        flight.done.set()
        if flight.token is not None:
            token, flight.token = flight.token, None
            await self.cache.unlock(flight.key, token)
