"""Talking to upstreams: one pooled aiohttp session per process.

aiohttp does not retry a POST on a keep-alive connection the upstream has just closed, so
``post`` retries exactly once when the failure happened before any response byte arrived.

Three kinds of upstream differ only in URLs and headers here:

- ``openai`` (and anything OpenAI-compatible: vLLM, Ollama, OpenRouter…): ``base_url`` ends
  in ``/v1``; the key goes as ``Authorization: Bearer``.
- ``azure``: the key goes as ``api-key``. A ``base_url`` ending in ``/openai`` addresses
  deployments, ``/openai/deployments/<model>/chat/completions?api-version=…``, the model
  being the (route-renamed) deployment name; one ending in ``/v1`` is Azure's v1 API (model
  in the body); one naming a deployment is used as it is.
- ``anthropic``: ``x-api-key`` and ``anthropic-version`` (the client's own, else
  ``ANTHROPIC_VERSION``); ``base_url`` with or without ``/v1``.
- ``bedrock``: ``/model/{modelId}/converse[-stream]`` or ``/invoke[-with-response-stream]``,
  the model id percent-encoded as boto3 encodes it; every attempt is signed with SigV4 by
  botocore (``gateway.aws``), or carries a Bedrock API key as a bearer token.
- ``gemini``: ``/v1beta/models/{model}:generateContent``, ``:streamGenerateContent?alt=sse``
  or ``:countTokens`` (a ``base_url`` ending in ``/v1`` or ``/v1beta`` keeps its version);
  the key goes as ``x-goog-api-key``, and no client header is forwarded.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from functools import lru_cache
from typing import Any
from urllib.parse import quote

import aiohttp
from yarl import URL

from tokenstile.config import UpstreamConfig
from tokenstile.errors import GatewayError
from tokenstile.gateway.aws import AwsSigner
from tokenstile.types import ApiKind

_OPENAI_PATHS: dict[str, str] = {
    "chat": "/chat/completions",
    "completions": "/completions",
    "embeddings": "/embeddings",
    "responses": "/responses",
    "moderations": "/moderations",
    "models": "/models",
    "images": "/images/generations",
    "image_edits": "/images/edits",
    "transcriptions": "/audio/transcriptions",
    "speech": "/audio/speech",
    "files": "/files",
    "batches": "/batches",
}
# APIs an Azure deployment URL serves (``/openai/deployments/<model>/…``).
_AZURE_DEPLOYMENT_APIS = frozenset({"chat", "completions", "embeddings", "images",
                                    "image_edits", "transcriptions", "speech"})
_ANTHROPIC_PATHS: dict[str, str] = {
    "messages": "/v1/messages",
    "count_tokens": "/v1/messages/count_tokens",
    "models": "/v1/models",
}
# Bedrock's actions: (api, streamed) -> the last segment of the URL.
BEDROCK_ACTIONS: dict[tuple[str, bool], str] = {
    ("converse", False): "converse",
    ("converse", True): "converse-stream",
    ("messages", False): "invoke",
    ("messages", True): "invoke-with-response-stream",
}
# Gemini's methods: (api, streamed) -> what follows the model in the URL.
GEMINI_ACTIONS: dict[tuple[str, bool], str] = {
    ("generate_content", False): "generateContent",
    ("generate_content", True): "streamGenerateContent?alt=sse",
    ("count_tokens", False): "countTokens",
    ("count_tokens", True): "countTokens",
    ("models", False): "models",
}
# Client headers worth forwarding, by upstream wire; everything else (cookies, auth,
# hop-by-hop, the other provider's headers) stays here.
FORWARDED_REQUEST_HEADERS = ("openai-beta", "accept")
FORWARDED_ANTHROPIC_HEADERS = ("anthropic-version", "anthropic-beta", "accept")
FORWARDED_BEDROCK_HEADERS = (
    "x-amzn-bedrock-trace", "x-amzn-bedrock-guardrailidentifier",
    "x-amzn-bedrock-guardrailversion", "x-amzn-bedrock-performanceconfig-latency",
)
RELAYED_RESPONSE_HEADERS = (
    "x-request-id", "request-id", "openai-processing-ms", "openai-version", "retry-after",
    "retry-after-ms", "x-amzn-requestid", "x-amzn-errortype",
)
ANTHROPIC_VERSION = "2023-06-01"
# Bodies larger than this (audio, images, batch files) are streamed to the upstream.
LARGE_BODY_BYTES = 512 * 1024
# Azure requires an api-version on its deployment URLs; this GA version when none is set.
AZURE_API_VERSION = "2024-10-21"


class UpstreamUnreachable(GatewayError):
    def __init__(self, upstream: str, reason: str) -> None:
        super().__init__(502, f"upstream {upstream!r} could not be reached ({reason}); "
                              "try again shortly", type="api_error", code="upstream_unreachable")


class UpstreamTimeout(GatewayError):
    """``sent``: the request may have reached the upstream, which may then have generated
    (and billed) an answer nobody received; False when the connection was never made."""

    def __init__(self, upstream: str, *, sent: bool = True) -> None:
        super().__init__(504, f"upstream {upstream!r} did not answer in time", type="api_error",
                         code="upstream_timeout")
        self.sent = sent


def upstream_url(config: UpstreamConfig, api: ApiKind | str, model: str | None = None,
                 stream: bool = False) -> str:
    """The URL for ``api`` on this upstream; ``model`` names the Azure deployment (and the
    Bedrock model, whose URL also says whether it streams)."""
    if config.kind == "bedrock":
        return _bedrock_url(config.base_url, model or "", BEDROCK_ACTIONS[(api, stream)])
    if config.kind == "gemini":
        return _gemini_url(config.base_url, model or "", GEMINI_ACTIONS[(api, stream)])
    if config.kind == "anthropic":
        return config.base_url.removesuffix("/v1") + _ANTHROPIC_PATHS[api]
    if config.kind != "azure":
        return config.base_url + _OPENAI_PATHS[api]
    return _azure_url(config, api, model)


@lru_cache(maxsize=4096)
def _bedrock_url(base_url: str, model: str, action: str) -> str:
    # botocore's percent_encode: the safe characters are -._~ (":" and "/" of model ids and
    # ARNs are encoded).
    return f"{base_url}/model/{quote(model, safe='-._~')}/{action}"


@lru_cache(maxsize=4096)
def _gemini_url(base_url: str, model: str, action: str) -> str:
    versioned = base_url if base_url.endswith(("/v1", "/v1beta")) else base_url + "/v1beta"
    if action == "models":
        return f"{versioned}/models"
    return f"{versioned}/models/{quote(model.removeprefix('models/'), safe='-._~')}:{action}"


def response_url(config: UpstreamConfig, response_id: str, action: str = "",
                 query: str = "") -> str:
    """A stored response on this upstream: ``…/responses/{id}[/{action}]``, the client's
    query string after the upstream's own (Azure's ``api-version``)."""
    return resource_url(config, "responses", response_id, action, query)


def resource_url(config: UpstreamConfig, api: str, resource_id: str, action: str = "",
                 query: str = "") -> str:
    """One object of an API on this upstream (a response, a batch, a file):
    ``…/{api path}/{id}[/{action}]``, the client's query after the upstream's own."""
    base, _, own = upstream_url(config, api).partition("?")
    url = f"{base}/{quote(resource_id, safe='')}" + (f"/{action}" if action else "")
    joined = "&".join(part for part in (own, query) if part)
    return f"{url}?{joined}" if joined else url


def _azure_url(config: UpstreamConfig, api: ApiKind | str, model: str | None) -> str:
    base, path = config.base_url, _OPENAI_PATHS[api]
    version = config.api_version
    if base.endswith("/v1") or "/deployments/" in base:
        url = base + path
    elif model and api in _AZURE_DEPLOYMENT_APIS:
        url = f"{base}/deployments/{quote(model, safe='')}{path}"
        version = version or AZURE_API_VERSION
    else:
        url = base + path
        version = version or AZURE_API_VERSION
    return f"{url}?api-version={quote(version, safe='')}" if version else url


def upstream_headers(config: UpstreamConfig, client_headers: Mapping[str, str],
                     provider_key: str | None) -> dict[str, str]:
    headers = {"content-type": "application/json"}
    if config.kind == "bedrock":
        headers["accept"] = "application/json"
        for name in FORWARDED_BEDROCK_HEADERS:
            value = client_headers.get(name)
            if value is not None:
                headers[name] = value
        key = provider_key or config.api_key
        if key:  # a Bedrock API key; else the request is signed (gateway.aws)
            headers["authorization"] = f"Bearer {key}"
        headers.update(config.headers)
        return headers
    if config.kind == "gemini":
        key = provider_key or config.api_key
        if key:
            headers["x-goog-api-key"] = key
        headers.update(config.headers)
        return headers
    anthropic = config.kind == "anthropic"
    for name in FORWARDED_ANTHROPIC_HEADERS if anthropic else FORWARDED_REQUEST_HEADERS:
        value = client_headers.get(name)
        if value is not None:
            headers[name] = value
    key = provider_key or config.api_key
    if anthropic:
        headers.setdefault("anthropic-version", ANTHROPIC_VERSION)
        if key:
            headers["x-api-key"] = key
    elif config.kind == "azure":
        if key:
            headers["api-key"] = key
    elif key:
        headers["authorization"] = f"Bearer {key}"
    headers.update(config.headers)
    return headers


class UpstreamClient:
    def __init__(self) -> None:
        self._sessions: dict[tuple[float, int], aiohttp.ClientSession] = {}
        self._timeouts: dict[tuple[float, float | None], aiohttp.ClientTimeout] = {}
        self._urls: dict[str, URL] = {}
        self.aws = AwsSigner()

    def _session(self, config: UpstreamConfig) -> aiohttp.ClientSession:
        key = (config.keepalive_s, config.max_connections)
        session = self._sessions.get(key)
        if session is None or session.closed:
            connector = aiohttp.TCPConnector(
                limit=config.max_connections, limit_per_host=config.max_connections,
                keepalive_timeout=config.keepalive_s, ttl_dns_cache=300,
                enable_cleanup_closed=False,
            )
            # No cookie jar: an upstream's cookies must not follow one caller's request
            # into another's (and a jar costs a lookup per call).
            session = aiohttp.ClientSession(connector=connector, auto_decompress=True,
                                            skip_auto_headers=("User-Agent",),
                                            cookie_jar=aiohttp.DummyCookieJar())
            self._sessions[key] = session
        return session

    async def post(self, name: str, config: UpstreamConfig, url: str, body: bytes,
                   headers: Mapping[str, str]) -> aiohttp.ClientResponse:
        """Send the request; return the response once its status line and headers are in."""
        timeout = self._timeout(config.connect_timeout_s, config.read_timeout_s)
        session = self._session(config)
        target = self._url(url)
        if config.kind == "bedrock":
            headers = await self.aws.headers(name, config, url, body, headers)
            target = URL(url, encoded=True)  # sent exactly as signed
        for attempt in (1, 2):
            # aiohttp writes a large bytes body in one go, holding the loop: stream it.
            data = io.BytesIO(body) if len(body) > LARGE_BODY_BYTES else body
            try:
                return await session.post(target, data=data, headers=headers, timeout=timeout)
            except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
                if attempt == 2 or isinstance(exc, aiohttp.ClientConnectorError):
                    raise UpstreamUnreachable(name, type(exc).__name__) from None
            except aiohttp.ClientConnectorError as exc:
                raise UpstreamUnreachable(name, type(exc).__name__) from None
            except TimeoutError as exc:
                connecting = isinstance(exc, aiohttp.ConnectionTimeoutError)
                raise UpstreamTimeout(name, sent=not connecting) from None
            except aiohttp.ClientError as exc:
                raise UpstreamUnreachable(name, type(exc).__name__) from None
        raise AssertionError("unreachable")

    def _timeout(self, connect: float, read: float | None) -> aiohttp.ClientTimeout:
        timeout = self._timeouts.get((connect, read))
        if timeout is None:
            timeout = self._timeouts[(connect, read)] = aiohttp.ClientTimeout(
                total=None, connect=connect, sock_read=read)
        return timeout

    def _url(self, url: str) -> URL:
        """Parsed once per distinct URL (the same few serve every request)."""
        parsed = self._urls.get(url)
        if parsed is None:
            if len(self._urls) > 1024:
                self._urls.clear()
            parsed = self._urls[url] = URL(url)
        return parsed

    async def request(self, method: str, name: str, config: UpstreamConfig, url: str,
                      headers: Mapping[str, str], body: bytes | None = None,
                      timeout_s: float | None = None) -> aiohttp.ClientResponse:
        """Any other call on an upstream (``GET``/``DELETE`` of a stored response, a
        cancel): the response once its headers are in; the caller releases it."""
        timeout = aiohttp.ClientTimeout(total=timeout_s, connect=config.connect_timeout_s,
                                        sock_read=config.read_timeout_s)
        try:
            return await self._session(config).request(method, url, data=body,
                                                       headers=headers, timeout=timeout)
        except TimeoutError:
            raise UpstreamTimeout(name) from None
        except aiohttp.ClientError as exc:
            raise UpstreamUnreachable(name, type(exc).__name__) from None

    async def get_json(self, name: str, config: UpstreamConfig, url: str,
                       headers: Mapping[str, str]) -> Any:
        timeout = aiohttp.ClientTimeout(total=min(config.read_timeout_s, 10.0),
                                        connect=config.connect_timeout_s)
        try:
            async with self._session(config).get(url, headers=headers, timeout=timeout) as resp:
                if resp.status != 200:
                    return None
                return await resp.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return None

    async def close(self) -> None:
        for session in self._sessions.values():
            await session.close()
        self._sessions.clear()
