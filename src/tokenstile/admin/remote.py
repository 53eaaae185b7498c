"""The CLI's way to a running gateway: the admin API over HTTP (``--url`` / ``$TOKENSTILE_URL``
with ``--admin-key`` / ``$TOKENSTILE_ADMIN_KEY``). Plain urllib: the CLI needs no event loop.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from typing import Any


class RemoteError(Exception):
    """The gateway refused, or could not be reached; ``message`` is what to show."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class AdminClient:
    def __init__(self, url: str, admin_key: str, timeout: float = 30.0) -> None:
        base = url.rstrip("/")
        for suffix in ("/admin", "/v1"):
            base = base.removesuffix(suffix)
        self.base = base + "/admin"
        self.admin_key = admin_key
        self.timeout = timeout

    def call(self, method: str, path: str, body: Mapping[str, Any] | None = None,
             params: Mapping[str, Any] | None = None) -> Any:
        url = self.base + path
        query = _query(params or {})
        if query:
            url += "?" + query
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(url, data=data, method=method, headers={
            "authorization": f"Bearer {self.admin_key}", "content-type": "application/json",
            "accept": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as resp:
                raw = resp.read()
                if "json" not in resp.headers.get("content-type", ""):
                    return raw.decode("utf-8")
                return json.loads(raw) if raw else None
        except urllib.error.HTTPError as err:
            raise RemoteError(err.code, _message(err)) from None
        except (urllib.error.URLError, OSError) as err:
            reason = getattr(err, "reason", err)
            raise RemoteError(0, f"cannot reach the gateway at {self.base}: {reason}") from None

    def get(self, path: str, **params: Any) -> Any:
        return self.call("GET", path, params=params)


def _query(params: Mapping[str, Any]) -> str:
    pairs: list[tuple[str, str]] = []
    for name, value in params.items():
        if value is None:
            continue
        values: Sequence[Any] = value if isinstance(value, list | tuple) else [value]
        pairs.extend((name, str(v).lower() if isinstance(v, bool) else str(v))
                     for v in values)
    return urllib.parse.urlencode(pairs)


def _message(err: urllib.error.HTTPError) -> str:
    try:
        body = json.loads(err.read())
        error = body["error"]
        details = error.get("details") or []
        extra = "".join(f"\n  {d.get('field', '')}: {d['message']}".replace("\n  : ", "\n  ")
                        for d in details if isinstance(d, dict) and "message" in d)
        return f"{error['message']}{extra}"
    except (ValueError, KeyError, TypeError):
        return f"the gateway answered {err.code} {err.reason}"
