"""What a client may ask of the cache for one request, and the header that tells it back.

A client can only make the cache do less: skip reading it (to get a fresh answer), skip
storing its answer (for privacy), or both. It can never make the gateway serve from the
cache where the configuration does not. Asked through ``x-tokenstile-cache`` (or the
standard ``Cache-Control`` request directives, which mean the same to HTTP caches):

=========================================  ============  ==============
request header                              read cache    store answer
=========================================  ============  ==============
``x-tokenstile-cache: skip``                no            no
``x-tokenstile-cache: refresh``             no            yes
``x-tokenstile-cache: no-store``            yes           no
``cache-control: no-cache``                 no            yes
``cache-control: no-store``                 yes           no
=========================================  ============  ==============

Directives combine (each one only removes), and unknown values are ignored.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

REQUEST_HEADER = "x-tokenstile-cache"
RESPONSE_HEADER = "x-tokenstile-cache"

CacheStatus = Literal["hit", "miss", "skip"]


@dataclass(frozen=True, slots=True)
class CacheUse:
    """Whether this request may be answered from the cache, and may leave its answer in it."""

    read: bool = True
    write: bool = True


_DIRECTIVES: dict[str, CacheUse] = {
    "skip": CacheUse(read=False, write=False),
    "bypass": CacheUse(read=False, write=False),
    "refresh": CacheUse(read=False, write=True),
    "no-cache": CacheUse(read=False, write=True),
    "no-store": CacheUse(read=True, write=False),
}


def cache_use(headers: Mapping[str, str]) -> CacheUse:
    """The client's wishes from request headers (lower-cased names)."""
    read = write = True
    for name in (REQUEST_HEADER, "cache-control"):
        value = headers.get(name)
        if not value:
            continue
        for token in value.lower().replace(";", ",").split(","):
            use = _DIRECTIVES.get(token.strip())
            if use is not None:
                read, write = read and use.read, write and use.write
    return CacheUse(read=read, write=write)
