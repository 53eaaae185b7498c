"""Signing requests to Bedrock upstreams with AWS Signature Version 4, by botocore.

Each attempt is signed afresh (its ``X-Amz-Date`` is when it is sent) with
``botocore.auth.SigV4Auth`` over a ``botocore.awsrequest.AWSRequest``: the method, the URL
(the model id percent-encoded as boto3 encodes it), the body, and the ``host`` and
``x-amz-date`` headers (with ``x-amz-security-token`` for temporary credentials), which are
the headers SigV4 requires signed. Nothing of the algorithm is written here: two small
subclasses only spare botocore work it repeats (preparing the request again to read its
body, re-encoding a path it has seen, deriving the day's signing key again, selecting the
headers to sign twice per signature).

Credentials come from the upstream's config (``aws_access_key_id`` /
``aws_secret_access_key`` / ``aws_session_token``), else from botocore's own chain for its
``aws_profile`` (the ``AWS_*`` variables, shared config and credential files, SSO, container
and instance roles). They are looked up once, in a thread (the chain may ask an instance
metadata endpoint), and refreshed by botocore when they are temporary; a refresh that is
due also runs in a thread.

An upstream with an ``api_key`` (a Bedrock API key) sends it as ``Authorization: Bearer``
instead of signing (``upstream.upstream_headers``), and so does a passthrough caller's own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlsplit

from tokenstile.config import UpstreamConfig
from tokenstile.errors import GatewayError

SERVICE = "bedrock"
_botocore: SimpleNamespace | None = None


def botocore_parts() -> SimpleNamespace:
    """botocore's signing and credential classes, imported on first use: a gateway with no
    Bedrock upstream never loads botocore. The first call imports (blocking): it happens in
    the thread that looks credentials up."""
    global _botocore
    if _botocore is None:
        try:
            from botocore import auth, awsrequest, credentials, session
        except ImportError:  # pragma: no cover - the [bedrock] extra is not installed
            raise RuntimeError("Bedrock needs botocore: pip install 'tokenstile[bedrock]'"
                               ) from None

        class BodyAsGiven(awsrequest.AWSRequest):  # type: ignore[misc]
            """An ``AWSRequest`` whose ``body`` is the bytes it was given. botocore's own
            prepares the whole request again each time SigV4 reads the body; for bytes the
            two are the same."""

            @property
            def body(self) -> bytes:
                data: bytes = self.data
                return data

        class RepeatsSpared(auth.SigV4Auth):  # type: ignore[misc]
            """``SigV4Auth`` that keeps what it would otherwise work out again: the
            canonical form of the URL paths it has seen (a Bedrock upstream calls a
            handful, one per model and action), the signing key of the day (derived from
            the secret, the date, the region and the service by four HMACs), and, within
            one signature, the headers to sign (botocore selects them twice)."""

            def __init__(self, *args: Any) -> None:
                super().__init__(*args)
                self._paths: dict[str, str] = {}
                self._keys: dict[tuple[bytes, str], bytes] = {}
                self._selected: tuple[Any, Any] | None = None

            def _normalize_url_path(self, path: str) -> str:
                found = self._paths.get(path)
                if found is None:
                    if len(self._paths) > 256:
                        self._paths.clear()
                    found = self._paths[path] = super()._normalize_url_path(path)
                return found

            def _sign(self, key: bytes, msg: str, hex: bool = False) -> Any:
                if hex:  # the signature itself: never the same twice
                    return super()._sign(key, msg, hex=True)
                found = self._keys.get((key, msg))
                if found is None:  # a step of the signing key's derivation
                    if len(self._keys) > 64:
                        self._keys.clear()
                    found = self._keys[(key, msg)] = super()._sign(key, msg)
                return found

            def add_auth(self, request: Any) -> None:
                try:
                    super().add_auth(request)
                finally:
                    self._selected = None

            def headers_to_sign(self, request: Any) -> Any:
                selected = self._selected
                if selected is None or selected[0] is not request:
                    selected = self._selected = (request, super().headers_to_sign(request))
                return selected[1]

        _botocore = SimpleNamespace(
            SigV4Auth=RepeatsSpared, AWSRequest=BodyAsGiven,
            Credentials=credentials.Credentials,
            ReadOnlyCredentials=credentials.ReadOnlyCredentials,
            RefreshableCredentials=credentials.RefreshableCredentials,
            Session=session.Session)
    return _botocore


def host_of(url: str) -> str:
    """The ``host`` header for ``url``: lower-case, with its port unless it is the
    scheme's default (what AWS signs, and what the upstream client then sends)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    if parts.port is not None and parts.port != {"http": 80, "https": 443}.get(parts.scheme):
        host = f"{host}:{parts.port}"
    return host


def no_credentials(upstream: str) -> GatewayError:
    return GatewayError(
        502, f"upstream {upstream!r} (Bedrock) has no AWS credentials: set "
             "aws_access_key_id and aws_secret_access_key for it, or the AWS_* environment "
             "variables or a profile where the gateway runs", type="api_error",
        code="upstream_auth_failed")


class AwsSigner:
    """SigV4 signatures for every Bedrock upstream of a process (credentials cached per
    upstream and its AWS settings)."""

    def __init__(self) -> None:
        self._credentials: dict[tuple[str | None, ...], Any] = {}
        self._lookups: dict[tuple[str | None, ...], asyncio.Future[Any]] = {}
        self._hosts: dict[str, str] = {}
        self._signers: dict[tuple[Any, str | None], Any] = {}

    async def headers(self, name: str, config: UpstreamConfig, url: str, body: bytes,
                      headers: Mapping[str, str]) -> dict[str, str]:
        """``headers`` with ``host``, ``x-amz-date`` (and ``x-amz-security-token``) and the
        SigV4 ``authorization`` for this request; unsigned when they already carry an
        ``authorization`` (a Bedrock API key, sent as a bearer token)."""
        base = dict(headers)
        origin = url.split("/model/", 1)[0]
        host = self._hosts.get(origin)
        if host is None:
            host = self._hosts[origin] = host_of(url)
        base["host"] = host
        if "authorization" in base:
            return base
        credentials = await self._frozen(name, config)
        botocore = botocore_parts()  # imported by the credentials' lookup
        signer = self._signers.get((credentials, config.region))
        if signer is None:
            if len(self._signers) > 64:  # refreshed credentials leave old ones behind
                self._signers.clear()
            signer = self._signers[(credentials, config.region)] = botocore.SigV4Auth(
                credentials, SERVICE, config.region)
        # Only the host is signed with the date (SigV4 requires no other header): botocore's
        # header handling costs per header, and this is on every call's path.
        request = botocore.AWSRequest(method="POST", url=url, data=body,
                                      headers={"host": host})
        signer.add_auth(request)
        signed = request.headers
        base["x-amz-date"] = signed["X-Amz-Date"]
        base["authorization"] = signed["Authorization"]
        if credentials.token:
            base["x-amz-security-token"] = signed["X-Amz-Security-Token"]
        return base

    async def _frozen(self, name: str, config: UpstreamConfig) -> Any:
        key = (name, config.aws_access_key_id, config.aws_secret_access_key,
               config.aws_session_token, config.aws_profile)
        found = self._credentials.get(key)
        if found is None:
            lookup = self._lookups.get(key)
            if lookup is None:  # one lookup for the requests that arrive meanwhile
                lookup = self._lookups[key] = asyncio.ensure_future(
                    asyncio.to_thread(resolve_credentials, config))
            try:
                found = await asyncio.shield(lookup)
            finally:
                if lookup.done():
                    self._lookups.pop(key, None)
            if found is None:
                raise no_credentials(name)
            self._credentials[key] = found
        botocore = botocore_parts()
        if isinstance(found, botocore.ReadOnlyCredentials):
            return found
        if isinstance(found, botocore.RefreshableCredentials) and found.refresh_needed():
            return await asyncio.to_thread(found.get_frozen_credentials)
        return found.get_frozen_credentials()


def resolve_credentials(config: UpstreamConfig) -> Any:
    """The upstream's credentials: its own keys, else botocore's chain (None: none
    found). Blocking: run it in a thread."""
    botocore = botocore_parts()
    if config.aws_access_key_id and config.aws_secret_access_key:
        return botocore.Credentials(config.aws_access_key_id, config.aws_secret_access_key,
                                    config.aws_session_token).get_frozen_credentials()
    return botocore.Session(profile=config.aws_profile).get_credentials()
