"""A cached answer, how it is stored, and what a hit means for the ledger.

The answer is kept in its non-streamed form (the body of a 200 response) because that is
the smallest faithful record: a streamed request is answered by rendering it as events
again (``replay``). Beside the body go the usage and cost of the call that produced it,
so that a hit can be recorded as free while saying what it saved.

On disk and on the wire an entry is one JSON line of metadata, a newline, then the body
bytes untouched: compact JSON never contains a raw newline, so the split is unambiguous and
the body never goes through a JSON parser on a hit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, cast, get_args

import orjson

from tokenstile.providers.counts import wants_usage_chunk
from tokenstile.types import ApiKind, CanonicalRequest, Usage, WireFormat

_FORMAT = 1
_APIS = frozenset(get_args(ApiKind))
_WIRES = frozenset(get_args(WireFormat))


class CorruptEntry(ValueError):
    """A stored entry that cannot be decoded (written by another version, or damaged)."""


@dataclass(frozen=True, slots=True)
class CachedAnswer:
    """One upstream answer as served to the client, ready to be served again.

    ``body`` is the non-streamed response body in the client's wire format (before any
    response policy ran: policies run again on every hit). ``model`` is the model that
    served it, ``cost_nano`` what the call cost, ``created_at`` when it was made (epoch
    seconds) and ``ttl_s`` how long it was stored for. Treat ``usage`` as read-only.
    """

    api: ApiKind
    wire: WireFormat
    body: bytes
    model: str
    usage: Usage = field(default_factory=Usage)
    cost_nano: int = 0
    created_at: float = 0.0
    ttl_s: float = 0.0

    @property
    def size(self) -> int:
        """Bytes the entry takes in a store (metadata included), for size limits."""
        return len(self.body) + 256

    def meta(self, ttl_s: float | None = None) -> bytes:
        """Everything but the body, as one line of JSON."""
        u = self.usage
        return orjson.dumps({
            "v": _FORMAT,
            "api": self.api,
            "wire": self.wire,
            "model": self.model,
            "usage": [u.input_tokens, u.output_tokens, u.cached_input_tokens,
                      u.cache_write_tokens, u.reasoning_tokens],
            "cost_nano": self.cost_nano,
            "created_at": self.created_at,
            "ttl_s": self.ttl_s if ttl_s is None else ttl_s,
        })

    def to_bytes(self, ttl_s: float | None = None) -> bytes:
        return self.meta(ttl_s) + b"\n" + self.body

    @classmethod
    def from_parts(cls, meta: bytes | str, body: bytes) -> CachedAnswer:
        """Decode what ``meta()`` wrote; raises CorruptEntry on anything unexpected."""
        try:
            m = orjson.loads(meta)
            if not isinstance(m, dict) or m.get("v") != _FORMAT:
                raise CorruptEntry("unknown cache entry format")
            api, wire, model = m["api"], m["wire"], m["model"]
            if api not in _APIS or wire not in _WIRES or not isinstance(model, str):
                raise CorruptEntry("cache entry names an unknown api or wire format")
            counts = [int(n) for n in m["usage"]]
            usage = Usage(input_tokens=counts[0], output_tokens=counts[1],
                          cached_input_tokens=counts[2], cache_write_tokens=counts[3],
                          reasoning_tokens=counts[4])
            return cls(
                api=cast(ApiKind, api),
                wire=cast(WireFormat, wire),
                body=bytes(body),
                model=model,
                usage=usage,
                cost_nano=int(m["cost_nano"]),
                created_at=float(m["created_at"]),
                ttl_s=float(m["ttl_s"]),
            )
        except CorruptEntry:
            raise
        except (orjson.JSONDecodeError, KeyError, IndexError, TypeError, ValueError) as exc:
            raise CorruptEntry(f"undecodable cache entry: {exc}") from None

    @classmethod
    def from_bytes(cls, blob: bytes) -> CachedAnswer:
        meta, sep, body = blob.partition(b"\n")
        if not sep:
            raise CorruptEntry("cache entry without a metadata line")
        return cls.from_parts(meta, body)


@dataclass(frozen=True, slots=True)
class HitAccounting:
    """What the ledger records for a request answered from the cache.

    Nothing was consumed upstream, so usage and cost are zero (budgets and counters are not
    charged); ``saved_nano`` is what the original call cost, ``detail`` what was saved and
    how old the answer is.
    """

    usage: Usage
    cost_nano: int
    saved_nano: int
    served_model: str
    detail: dict[str, Any]


def account_hit(answer: CachedAnswer, now: float) -> HitAccounting:
    """The ledger view of serving ``answer`` at ``now`` (epoch seconds): free, and saving
    the cost of the call that produced it."""
    return HitAccounting(
        usage=Usage(),
        cost_nano=0,
        saved_nano=max(0, answer.cost_nano),
        served_model=answer.model,
        detail={
            "cache_age_s": round(max(0.0, now - answer.created_at), 3),
            "saved_input_tokens": answer.usage.input_tokens,
            "saved_output_tokens": answer.usage.output_tokens,
        },
    )


def wants_stream_usage(req: CanonicalRequest) -> bool:
    """Whether a streamed OpenAI client asked for the final usage chunk."""
    return wants_usage_chunk(req.body)


def cut_by_output_cap(api: ApiKind, wire: WireFormat, body: bytes) -> bool:
    """Whether the answer stopped because it reached its output cap (or cannot be read).

    Such an answer depends on the exact cap, so it may only be stored under the key of the
    body as forwarded; an answer that ended by itself is the same whatever cap it had.
    """
    if api in ("embeddings", "count_tokens", "embed_content", "batch_embed_contents"):
        return False
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        return True
    if not isinstance(payload, dict):
        return True
    if wire == "anthropic":
        return bool(payload.get("stop_reason") == "max_tokens")
    if wire == "gemini":
        candidates = payload.get("candidates")
        return not isinstance(candidates, list) or not candidates or any(
            not isinstance(c, dict) or c.get("finishReason") == "MAX_TOKENS"
            for c in candidates)
    if api == "responses":
        details = payload.get("incomplete_details")
        return payload.get("status") == "incomplete" and (
            not isinstance(details, dict) or details.get("reason") == "max_output_tokens")
    choices = payload.get("choices")
    if not isinstance(choices, list):
        return True
    return any(not isinstance(c, dict) or c.get("finish_reason") == "length" for c in choices)
