"""The upstream client: what one caller's call leaves behind never reaches another's."""

from __future__ import annotations

from aiohttp import web

from tokenstile.config import UpstreamConfig
from tokenstile.gateway.upstream import UpstreamClient


async def test_an_upstreams_cookies_are_not_sent_with_later_calls() -> None:
    seen: list[str | None] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append(request.headers.get("cookie"))
        response = web.json_response({"ok": True})
        response.set_cookie("session", "caller-one-secret")
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    client = UpstreamClient()
    config = UpstreamConfig(kind="openai", base_url=f"http://127.0.0.1:{port}/v1")
    # A host name (the default jar keeps no cookies for bare IP addresses)
    url = f"http://localhost:{port}/v1/chat/completions"
    try:
        for _ in range(2):
            resp = await client.post("up", config, url, b"{}", {"content-type": "application/json"})
            assert resp.status == 200
            resp.release()
    finally:
        await client.close()
        await runner.cleanup()
    assert seen == [None, None]
