"""Talking to upstreams: URLs, headers, and the calls.

The hot call, ``post`` (every proxied request), goes by the lean HTTP/1.1 client of
``gateway.http_client``; a kept-alive connection the upstream closed before any byte of its
answer is tried exactly once more. The rare others (``request``, ``get_json``) go by one
pooled aiohttp session per setting, aiohttp being imported by the first of them (about
0.1 s of CPU and 9 MB of a worker's startup otherwise). Both answer with an ``UpstreamResponse``
(``gateway.upstream_response``).

Three kinds of upstream differ only in URLs and headers here:

- ``openai`` (and anything OpenAI-compatible: vLLM, Ollama, OpenRouter…): ``base_url`` ends
  in ``/v1``; the key goes as ``Authorization: Bearer``.
- ``azure``: the key goes as ``api-key``. A ``base_url`` ending in ``/openai`` addresses
  deployments, ``/openai/deployments/<model>/chat/completions?api-version=…``, the model
  being the (route-renamed) deployment name; one ending in ``/v1`` is Azure's v1 API (model
  in the body); one naming a deployment is used as it is.
- ``anthropic``: ``x-api-key`` and ``anthropic-version`` (the client's own, else
  ``ANTHROPIC_VERSION``); ``base_url`` with or without ``/v1``.
- ``bedrock``: ``/model/{modelId}/converse[-stream]`` or ``/invoke[-with-response-stream]``
  (a Titan embedding too),
  the model id percent-encoded as boto3 encodes it; every attempt is signed with SigV4 by
  botocore (``gateway.aws``), or carries a Bedrock API key as a bearer token.
- ``gemini``: ``/v1beta/models/{model}:generateContent``, ``:streamGenerateContent?alt=sse``,
  ``:countTokens``, ``:embedContent`` or ``:batchEmbedContents`` (a ``base_url`` ending in
  ``/v1`` or ``/v1beta`` keeps its version); the key goes as ``x-goog-api-key``, and no
  client header is forwarded.
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import AsyncIterator, Iterator, Mapping
from functools import lru_cache
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from multidict import CIMultiDictProxy
from yarl import URL

from tokenstile.config import UpstreamConfig
from tokenstile.errors import GatewayError
from tokenstile.gateway import http_client
from tokenstile.gateway.aws import AwsSigner
from tokenstile.gateway.upstream_response import UpstreamBodyError
from tokenstile.types import ApiKind

if TYPE_CHECKING:
    import aiohttp

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
    ("count_tokens", False): "count-tokens",
    ("embeddings", False): "invoke",  # a Titan embedding (never streamed)
}
# Gemini's methods: (api, streamed) -> what follows the model in the URL.
GEMINI_ACTIONS: dict[tuple[str, bool], str] = {
    ("generate_content", False): "generateContent",
    ("generate_content", True): "streamGenerateContent?alt=sse",
    ("count_tokens", False): "countTokens",
    ("count_tokens", True): "countTokens",
    ("embed_content", False): "embedContent",
    ("batch_embed_contents", False): "batchEmbedContents",
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
LARGE_BODY_BYTES = http_client.LARGE_BODY_BYTES
# Azure requires an api-version on its deployment URLs; this GA version when none is set.
AZURE_API_VERSION = "2024-10-21"
# The reasons an unreachable upstream's error names (as the aiohttp client named them).
_REASONS: dict[type[Exception], str] = {
    http_client.ConnectFailed: "ClientConnectorError",
    http_client.ClosedEarly: "ServerDisconnectedError",
    http_client.ResponseBroken: "ClientResponseError",
    ValueError: "InvalidHeader",
}


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
    """The hot call (``post``) goes by the lean client of ``gateway.http_client``; the rare
    others (``request``, ``get_json``) by one pooled aiohttp session per setting.
    ``ssl_context``: whose certificates to trust on https (default: the system's)."""

    def __init__(self, ssl_context: ssl.SSLContext | None = None) -> None:
        self._sessions: dict[tuple[float, int], aiohttp.ClientSession] = {}
        self._targets: dict[str, http_client.Target] = {}
        self._http = http_client.HttpClient(ssl_context)
        self.aws = AwsSigner()

    def _session(self, config: UpstreamConfig) -> aiohttp.ClientSession:
        import aiohttp

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
                   headers: Mapping[str, str]) -> http_client.Response:
        """Send the request; return the response once its status line and headers are in.

        By the lean client (``gateway.http_client``): a kept-alive connection the upstream
        closed before any byte of its answer is tried once more, on a new connection."""
        bedrock = config.kind == "bedrock"
        if bedrock:
            headers = await self.aws.headers(name, config, url, body, headers)
        target = self._targets.get(url)
        if target is None:
            target = self._target(name, url, encoded=bedrock)  # Bedrock's: sent as signed
        try:
            head = http_client.request_head("POST", target, headers, len(body))
            return await self._http.send(
                target, head, body, limit=config.max_connections,
                keepalive_s=config.keepalive_s, connect_timeout=config.connect_timeout_s,
                read_timeout=config.read_timeout_s)
        except http_client.ConnectTimeout:
            raise UpstreamTimeout(name, sent=False) from None
        except TimeoutError:
            raise UpstreamTimeout(name) from None
        except (http_client.ConnectFailed, http_client.ClosedEarly,
                http_client.ResponseBroken, ValueError) as exc:
            raise UpstreamUnreachable(name, _REASONS.get(type(exc), type(exc).__name__)) \
                from None

    def _target(self, name: str, url: str, encoded: bool) -> http_client.Target:
        """Parsed once per distinct URL (the same few serve every request)."""
        parsed = URL(url, encoded=encoded)
        if parsed.scheme not in ("http", "https") or not parsed.raw_host:
            raise UpstreamUnreachable(name, "InvalidURL")
        if len(self._targets) > 1024:
            self._targets.clear()
        target = self._targets[url] = http_client.target_of(
            parsed.scheme, parsed.raw_host, parsed.explicit_port, parsed.raw_path_qs)
        return target

    async def request(self, method: str, name: str, config: UpstreamConfig, url: str,
                      headers: Mapping[str, str], body: bytes | None = None,
                      timeout_s: float | None = None) -> AiohttpAnswer:
        """Any other call on an upstream (``GET``/``DELETE`` of a stored response, a
        cancel): the response once its headers are in; the caller releases it."""
        import aiohttp

        timeout = aiohttp.ClientTimeout(total=timeout_s, connect=config.connect_timeout_s,
                                        sock_read=config.read_timeout_s)
        try:
            return AiohttpAnswer(await self._session(config).request(
                method, url, data=body, headers=headers, timeout=timeout))
        except TimeoutError:
            raise UpstreamTimeout(name) from None
        except aiohttp.ClientError as exc:
            raise UpstreamUnreachable(name, type(exc).__name__) from None

    async def get_json(self, name: str, config: UpstreamConfig, url: str,
                       headers: Mapping[str, str]) -> Any:
        import aiohttp

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
        self._http.close()
        for session in self._sessions.values():
            await session.close()
        self._sessions.clear()


@contextlib.contextmanager
def _as_body_errors() -> Iterator[None]:
    """aiohttp's client errors while a body is read, as ``UpstreamBodyError``; its read
    timeouts (``ClientError``s too) stay ``TimeoutError``."""
    import aiohttp

    try:
        yield
    except TimeoutError:
        raise
    except aiohttp.ClientError as exc:
        raise UpstreamBodyError(f"{type(exc).__name__}: {exc}") from exc


class _AiohttpBody:
    __slots__ = ("_content",)

    def __init__(self, content: aiohttp.StreamReader) -> None:
        self._content = content

    async def iter_any(self) -> AsyncIterator[bytes]:
        with _as_body_errors():
            async for chunk in self._content.iter_any():
                yield chunk


class AiohttpAnswer:
    """aiohttp's response as an ``UpstreamResponse``: a client error while its body is read
    is an ``UpstreamBodyError``, as it is from the lean client (a read timeout stays a
    ``TimeoutError``)."""

    __slots__ = ("_response", "content")

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response
        self.content = _AiohttpBody(response.content)

    @property
    def status(self) -> int:
        return self._response.status

    @property
    def headers(self) -> CIMultiDictProxy[str]:
        return self._response.headers

    async def read(self) -> bytes:
        with _as_body_errors():
            return await self._response.read()

    def release(self) -> None:
        self._response.release()
