"""What the fake upstream keeps: its settings, and a record of every request it answered."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

Json = dict[str, Any]

DEFAULT_MODELS: tuple[str, ...] = (
    "gpt-4o-mini", "gpt-4o", "gpt-4.1-mini", "o4-mini", "gpt-3.5-turbo-instruct",
    "text-embedding-3-small", "omni-moderation-latest",
    "claude-sonnet-4-6", "claude-haiku-4-5", "claude-opus-4-5",
)


@dataclass(slots=True)
class FakeRecord:
    """One request as the fake saw and answered it.

    Token fields are what the fake reported (or, for a cut stream, what it had emitted):
    ``input_tokens`` includes cached, cache-write and audio tokens, ``output_tokens``
    includes reasoning and audio tokens. Errors, models, moderations and count_tokens report
    zero usage. ``service_tier`` is the tier the answer named.
    ``outcome`` is one of: completed, error, cut (the fake dropped the connection),
    stream_error (an in-stream error event), client_disconnected.
    """

    request_id: str
    route: str
    method: str
    model: str
    stream: bool
    status: int
    outcome: str
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    cache_write_1h_tokens: int = 0
    input_audio_tokens: int = 0
    output_audio_tokens: int = 0
    cached_audio_tokens: int = 0
    web_searches: int = 0
    web_fetches: int = 0
    file_searches: int = 0
    service_tier: str | None = None
    units: dict[str, int] = field(default_factory=dict)
    api_key: str | None = None
    directives: dict[str, object] = field(default_factory=dict)
    body: Any = None
    started_at: float = 0.0
    duration_ms: float = 0.0
    raw_headers: list[tuple[bytes, bytes]] = field(default_factory=list, repr=False)

    @property
    def headers(self) -> dict[str, str]:
        """Request headers, lower-cased names (decoded on demand: off the hot path)."""
        return {k.decode("latin-1"): v.decode("latin-1") for k, v in self.raw_headers}

    def to_json(self) -> Json:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "raw_headers"}
        out.update(headers=self.headers, completed=self.completed, cut=self.cut)
        return out

    @property
    def completed(self) -> bool:
        return self.outcome == "completed"

    @property
    def cut(self) -> bool:
        """The stream ended early: dropped by the fake, or the client went away."""
        return self.outcome in ("cut", "client_disconnected")


class Tally:
    """Totals and per-request records; updated on the server's loop, read from any thread.

    ``records`` returns a copy. Token totals sum the usage the fake reported.
    """

    def __init__(self, max_records: int = 100_000) -> None:
        self._cond = threading.Condition()
        self._records: deque[FakeRecord] = deque(maxlen=max_records)
        self.requests = 0
        self.input_tokens = 0
        self.output_tokens = 0
        self.cached_tokens = 0
        self.cache_write_tokens = 0
        self.reasoning_tokens = 0
        self.errors = 0
        self.cut = 0
        self.in_flight = 0

    @property
    def records(self) -> list[FakeRecord]:
        with self._cond:
            return list(self._records)

    @property
    def last(self) -> FakeRecord | None:
        with self._cond:
            return self._records[-1] if self._records else None

    def begin(self) -> None:
        with self._cond:
            self.in_flight += 1

    def add(self, record: FakeRecord) -> None:
        with self._cond:
            self.in_flight -= 1
            self._records.append(record)
            self.requests += 1
            self.input_tokens += record.input_tokens
            self.output_tokens += record.output_tokens
            self.cached_tokens += record.cached_tokens
            self.cache_write_tokens += record.cache_write_tokens
            self.reasoning_tokens += record.reasoning_tokens
            if record.status >= 400:
                self.errors += 1
            if record.cut:
                self.cut += 1
            self._cond.notify_all()

    def reset(self) -> None:
        with self._cond:
            self._records.clear()
            self.requests = self.input_tokens = self.output_tokens = 0
            self.cached_tokens = self.cache_write_tokens = self.reasoning_tokens = 0
            self.errors = self.cut = 0
            self._cond.notify_all()

    def wait_for(self, predicate: Callable[[Tally], bool], timeout: float = 5.0) -> bool:
        """Block until ``predicate(tally)`` holds (records land after a client hangs up)."""
        with self._cond:
            return self._cond.wait_for(lambda: predicate(self), timeout)

    def totals(self) -> dict[str, int]:
        with self._cond:
            return {
                "requests": self.requests,
                "input_tokens": self.input_tokens,
                "output_tokens": self.output_tokens,
                "cached_tokens": self.cached_tokens,
                "cache_write_tokens": self.cache_write_tokens,
                "reasoning_tokens": self.reasoning_tokens,
                "errors": self.errors,
                "cut": self.cut,
                "in_flight": self.in_flight,
            }

    def snapshot(self, with_records: bool = True) -> Json:
        out: Json = dict(self.totals())
        if with_records:
            out["records"] = [r.to_json() for r in self.records]
        return out


@dataclass(slots=True)
class FakeSettings:
    """Server-wide behaviour; may be changed between requests."""

    default_output_tokens: int = 12
    require_key: str | None = None  # answer 401 unless this key is presented
    defaults: dict[str, object] = field(default_factory=dict)  # directives for every call
    embedding_dim: int = 8
    moderation_trigger: str = "forbidden"
    models: tuple[str, ...] = DEFAULT_MODELS
    max_records: int = 100_000
    record_bodies: bool = True  # keep each request's parsed JSON body on its record
    background_polls: int = 2  # a background response completes on this poll of it
    # Bedrock: access key id -> secret; when any is set, Bedrock calls must be SigV4-signed
    # by one of them (else anything goes). Bedrock API keys accepted as bearer tokens.
    aws_credentials: dict[str, str] = field(default_factory=dict)
    bedrock_api_keys: tuple[str, ...] = ()
