"""The response cache: exact-match answers for repeated requests, served for free.

- ``cache_key`` (key.py): which requests share an answer, and which are never cached;
- ``CachedAnswer`` / ``account_hit`` (answer.py): what is stored, and what a hit saves;
- ``open_response_cache`` (store.py): a ``memory://``, ``sqlite:///`` or ``redis://`` store
  behind a guard that turns every failure into a miss;
- ``assemble_from_stream`` / ``StreamRecorder``: the non-streamed answer of a stream;
- ``replay``: a cached answer as a body, or as the stream the client asked for;
- ``cache_use`` (directives.py): what a client asked of the cache through its headers.
"""

from tokenstile.cache.answer import (
    CachedAnswer,
    CorruptEntry,
    HitAccounting,
    account_hit,
    cut_by_output_cap,
    wants_stream_usage,
)
from tokenstile.cache.assemble import StreamAssembler, assemble_from_stream, assembler_for
from tokenstile.cache.directives import RESPONSE_HEADER, CacheStatus, CacheUse, cache_use
from tokenstile.cache.key import cache_key, key_to_store, normalized_body, uncacheable_reason
from tokenstile.cache.recorder import StreamRecorder
from tokenstile.cache.replay import (
    content_type,
    group_events,
    replay,
    replay_answer,
    replay_events,
)
from tokenstile.cache.store import (
    DEFAULT_MAX_ENTRY_BYTES,
    CacheStats,
    GuardedCache,
    ResponseCache,
    open_response_cache,
    response_cache_from_url,
)

__all__ = [
    "DEFAULT_MAX_ENTRY_BYTES",
    "RESPONSE_HEADER",
    "CacheStats",
    "CacheStatus",
    "CacheUse",
    "CachedAnswer",
    "CorruptEntry",
    "GuardedCache",
    "HitAccounting",
    "ResponseCache",
    "StreamAssembler",
    "StreamRecorder",
    "account_hit",
    "assemble_from_stream",
    "assembler_for",
    "cache_key",
    "cache_use",
    "content_type",
    "cut_by_output_cap",
    "group_events",
    "key_to_store",
    "normalized_body",
    "open_response_cache",
    "replay",
    "replay_answer",
    "replay_events",
    "response_cache_from_url",
    "uncacheable_reason",
    "wants_stream_usage",
]
