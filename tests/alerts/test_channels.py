"""Channels against real receivers: a webhook server and an SMTP server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import email
import logging
from email import policy

import pytest

from tests.conftest import WebhookReceiver
from tokenstile.alerts.channels import (
    DeliveryError,
    EmailChannel,
    LogChannel,
    WebhookChannel,
    build_channel,
    redact_url,
)
from tokenstile.alerts.rules import Alert

from .conftest import SmtpServer, free_port


def sample(key: str = "budget:projects.demo.daily_limit:demo:20260101:0.9") -> Alert:
    return Alert(kind="budget_threshold", severity="warning",
                 title="project 'demo' has used 90% of its daily budget",
                 message="project 'demo' has used 900 of 1,000 tokens (90.0%).",
                 dedupe_key=key, data={"threshold": 0.9, "used": 900}, ts=1_767_225_600.0)


async def test_webhook_posts_the_alert_as_json(webhook: WebhookReceiver) -> None:
    channel = WebhookChannel(webhook.url, headers={"x-team": "platform"})
    try:
        await channel.send(sample())
    finally:
        await channel.close()
    [body] = webhook.bodies
    assert body["kind"] == "budget_threshold"
    assert body["dedupe_key"].endswith(":0.9")
    assert body["data"] == {"threshold": 0.9, "used": 900}
    assert body["time"] == "2026-01-01T00:00:00+00:00"
    assert webhook.headers[0]["x-team"] == "platform"
    assert webhook.headers[0]["Content-Type"] == "application/json"


async def test_webhook_slack_body(webhook: WebhookReceiver) -> None:
    channel = WebhookChannel(webhook.url, format="slack")
    try:
        await channel.send(sample())
    finally:
        await channel.close()
    [body] = webhook.bodies
    assert set(body) == {"text", "blocks"}
    assert "90% of its daily budget" in body["text"]
    assert body["blocks"][0]["type"] == "section"


async def test_webhook_failure_is_clear_and_keeps_the_url_secret(
        webhook: WebhookReceiver) -> None:
    webhook.fail_next = 1
    channel = WebhookChannel(webhook.url, name="slack")
    try:
        with pytest.raises(DeliveryError) as info:
            await channel.send(sample())
    finally:
        await channel.close()
    text = str(info.value)
    assert "HTTP 500" in text and "receiver says no" in text and "'slack'" in text
    assert "s3cr3t" not in text
    assert info.value.retryable


async def test_webhook_client_error_is_not_retryable(webhook: WebhookReceiver) -> None:
    webhook.fail_next, webhook.status = 1, 404
    channel = WebhookChannel(webhook.url)
    try:
        with pytest.raises(DeliveryError) as info:
            await channel.send(sample())
    finally:
        await channel.close()
    assert not info.value.retryable


async def test_webhook_timeout(webhook: WebhookReceiver) -> None:
    webhook.delay_s = 1.0
    channel = WebhookChannel(webhook.url, timeout_s=0.2)
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        with pytest.raises(DeliveryError, match=r"did not answer within 0\.2s"):
            await channel.send(sample())
    finally:
        await channel.close()
    assert loop.time() - started < 1.5


async def test_webhook_unreachable() -> None:
    channel = WebhookChannel(f"http://127.0.0.1:{free_port()}/hook/secret", timeout_s=2)
    try:
        with pytest.raises(DeliveryError, match="cannot reach") as info:
            await channel.send(sample())
    finally:
        await channel.close()
    assert "secret" not in str(info.value)


def test_redact_url_and_validation() -> None:
    assert redact_url("https://hooks.slack.com/services/T0/B0/xyz") == "https://hooks.slack.com/…"
    assert redact_url("http://127.0.0.1:9000/a?b=c") == "http://127.0.0.1:9000/…"
    with pytest.raises(ValueError):
        WebhookChannel("ftp://example.com/x")
    with pytest.raises(ValueError):
        WebhookChannel("http://example.com/x", format="xml")  # type: ignore[arg-type]


async def test_email_reaches_a_real_smtp_server(smtp_server: SmtpServer) -> None:
    channel = EmailChannel(smtp_server.host, smtp_server.port, "tokenstile@example.com",
                           ["ops@example.com", "finance@example.com"], timeout_s=5)
    await channel.send(sample())
    [(sender, recipients, raw)] = smtp_server.sink.messages
    assert sender == "tokenstile@example.com"
    assert recipients == ["ops@example.com", "finance@example.com"]
    msg = email.message_from_bytes(raw, policy=policy.default)
    assert msg["Subject"] == ("[tokenstile] warning: project 'demo' has used 90% of its daily "
                              "budget")
    body = msg.get_content()
    assert "900 of 1,000 tokens" in body and '"threshold": 0.9' in body


async def test_email_failure_is_clear() -> None:
    channel = EmailChannel("127.0.0.1", free_port(), "a@example.com", ["b@example.com"],
                           timeout_s=2, password="hunter2", username="u")
    with pytest.raises(DeliveryError, match=r"cannot deliver through smtp://127\.0\.0\.1") as info:
        await channel.send(sample())
    assert "hunter2" not in str(info.value)


def test_email_needs_recipients() -> None:
    with pytest.raises(ValueError, match="recipient"):
        EmailChannel("127.0.0.1", 25, "a@example.com", [])


async def test_log_channel(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="tokenstile.alerts")
    await LogChannel().send(sample())
    [record] = caplog.records
    assert record.levelno == logging.WARNING
    assert "90% of its daily budget" in record.getMessage()


def test_build_channel_from_plain_config() -> None:
    slack = build_channel("ops", {"kind": "slack", "url": "https://hooks.example.com/x"})
    assert isinstance(slack, WebhookChannel) and slack.format == "slack" and slack.name == "ops"
    hook = build_channel("h", {"url": "http://127.0.0.1:1/x", "headers": {"a": "b"},
                               "timeout_s": 3})
    assert isinstance(hook, WebhookChannel) and hook.format == "json" and hook.timeout_s == 3
    mail = build_channel("mail", {"kind": "email", "host": "smtp.example.com", "port": 587,
                                  "sender": "ts@example.com", "recipients": "ops@example.com",
                                  "starttls": True})
    assert isinstance(mail, EmailChannel) and mail.recipients == ["ops@example.com"]
    assert mail.starttls and mail.port == 587
    assert isinstance(build_channel("log", {"kind": "log"}), LogChannel)
    with pytest.raises(ValueError, match="needs a url"):
        build_channel("x", {"kind": "webhook"})
    with pytest.raises(ValueError, match="needs host, sender"):
        build_channel("x", {"kind": "email", "recipients": ["a@b"]})
    with pytest.raises(ValueError, match="unknown kind 'pager'"):
        build_channel("x", {"kind": "pager"})
