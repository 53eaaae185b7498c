"""Where alerts go: a webhook (generic JSON or Slack), e-mail over SMTP, or the log.

Each channel does one delivery attempt with a timeout and raises ``DeliveryError`` with a
readable reason when it fails; retrying is the engine's job. Webhook URLs (a Slack URL is
itself a credential) and SMTP passwords never appear in an error message or a log line:
only the scheme and host do.
"""

from __future__ import annotations

import asyncio
import logging
import smtplib
import ssl
from collections.abc import Mapping, Sequence
from email.message import EmailMessage
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol
from urllib.parse import urlsplit

import orjson

from tokenstile.alerts.rules import Alert

if TYPE_CHECKING:
    import aiohttp

_EMOJI = {"info": ":information_source:", "warning": ":warning:", "critical": ":rotating_light:"}


class DeliveryError(Exception):
    """One delivery attempt failed; the message says why, without secrets."""

    def __init__(self, channel: str, reason: str, *, retryable: bool = True) -> None:
        self.channel = channel
        self.reason = reason
        self.retryable = retryable
        super().__init__(f"alert channel {channel!r}: {reason}")


class Channel(Protocol):
    name: str

    async def send(self, alert: Alert) -> None:
        """Deliver once or raise ``DeliveryError``."""
        ...

    async def close(self) -> None: ...


def redact_url(url: str) -> str:
    """``https://hooks.slack.com/services/T/B/secret`` → ``https://hooks.slack.com/…``."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}/…"


def slack_body(alert: Alert) -> dict[str, Any]:
    """Slack's incoming-webhook shape: ``text`` for notifications, ``blocks`` for layout."""
    emoji = _EMOJI.get(alert.severity, "")
    text = f"{emoji} *{alert.title}*\n{alert.message}".strip()
    return {
        "text": text,
        "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "text": text[:3000]}},
            {"type": "context", "elements": [{"type": "mrkdwn", "text": (
                f"tokenstile · {alert.kind} · {alert.severity} · `{alert.dedupe_key}`")[:300]}]},
        ],
    }


class WebhookChannel:
    """POST each alert to a URL: the alert as JSON, or a Slack-compatible body."""

    def __init__(self, url: str, format: Literal["json", "slack"] = "json",
                 headers: Mapping[str, str] | None = None, *, name: str = "webhook",
                 timeout_s: float = 10.0) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"a webhook URL must be http(s), got {redact_url(url)}")
        if format not in ("json", "slack"):
            raise ValueError(f"unknown webhook format {format!r}; expected json or slack")
        self.name = name
        self.url = url
        self.format = format
        self.headers = dict(headers or {})
        self.timeout_s = timeout_s
        self._session: aiohttp.ClientSession | None = None

    def body(self, alert: Alert) -> bytes:
        return orjson.dumps(slack_body(alert) if self.format == "slack" else alert.to_dict())

    async def send(self, alert: Alert) -> None:
        import aiohttp  # on the first delivery: a gateway that sends none never loads it

        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout_s))
        headers = {"content-type": "application/json", "user-agent": "tokenstile-alerts",
                   **self.headers}
        where = redact_url(self.url)
        try:
            async with self._session.post(self.url, data=self.body(alert),
                                          headers=headers) as response:
                if response.status >= 300:
                    text = (await response.text(errors="replace"))[:200]
                    raise DeliveryError(
                        self.name, f"{where} answered HTTP {response.status}: {text}",
                        retryable=response.status >= 500 or response.status in (408, 429))
        except TimeoutError:
            raise DeliveryError(self.name, f"{where} did not answer within "
                                           f"{self.timeout_s:g}s") from None
        except aiohttp.ClientError as exc:
            raise DeliveryError(self.name, f"cannot reach {where}: "
                                           f"{type(exc).__name__}") from None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class EmailChannel:
    """Send each alert as a plain-text e-mail through an SMTP server.

    smtplib is blocking, so each message is sent on a worker thread; ``timeout_s`` bounds
    every socket operation and the whole exchange.
    """

    def __init__(self, host: str, port: int, sender: str, recipients: Sequence[str], *,
                 starttls: bool = False, use_ssl: bool = False, username: str | None = None,
                 password: str | None = None, name: str = "email",
                 timeout_s: float = 15.0, subject_prefix: str = "[tokenstile]") -> None:
        if not recipients:
            raise ValueError("an e-mail channel needs at least one recipient")
        self.name = name
        self.host = host
        self.port = port
        self.sender = sender
        self.recipients = list(recipients)
        self.starttls = starttls
        self.use_ssl = use_ssl
        self.username = username
        self._password = password
        self.timeout_s = timeout_s
        self.subject_prefix = subject_prefix

    def message(self, alert: Alert) -> EmailMessage:
        msg = EmailMessage()
        msg["Subject"] = f"{self.subject_prefix} {alert.severity}: {alert.title}".strip()
        msg["From"] = self.sender
        msg["To"] = ", ".join(self.recipients)
        msg["X-Tokenstile-Alert"] = alert.kind
        details = orjson.dumps(alert.data, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS,
                               default=str).decode()
        msg.set_content(f"{alert.message}\n\nkind: {alert.kind}\nseverity: {alert.severity}\n"
                        f"key: {alert.dedupe_key}\n\n{details}\n")
        return msg

    def _send_blocking(self, msg: EmailMessage) -> None:
        smtp: smtplib.SMTP
        if self.use_ssl:
            smtp = smtplib.SMTP_SSL(self.host, self.port, timeout=self.timeout_s,
                                    context=ssl.create_default_context())
        else:
            smtp = smtplib.SMTP(self.host, self.port, timeout=self.timeout_s)
        with smtp:
            if self.starttls:
                smtp.starttls(context=ssl.create_default_context())
            if self.username:
                smtp.login(self.username, self._password or "")
            smtp.send_message(msg, from_addr=self.sender, to_addrs=self.recipients)

    async def send(self, alert: Alert) -> None:
        msg = self.message(alert)
        where = f"smtp://{self.host}:{self.port}"
        try:
            await asyncio.wait_for(asyncio.to_thread(self._send_blocking, msg),
                                   self.timeout_s * 2)
        except TimeoutError:
            raise DeliveryError(self.name, f"{where} did not finish within "
                                           f"{self.timeout_s * 2:g}s") from None
        except smtplib.SMTPAuthenticationError as exc:
            raise DeliveryError(self.name, f"{where} refused the login "
                                           f"({exc.smtp_code})", retryable=False) from None
        except smtplib.SMTPRecipientsRefused:
            raise DeliveryError(self.name, f"{where} refused every recipient",
                                retryable=False) from None
        except smtplib.SMTPResponseException as exc:
            raise DeliveryError(self.name, f"{where} answered {exc.smtp_code}: "
                                           f"{exc.smtp_error[:200]!r}") from None
        except (smtplib.SMTPException, OSError) as exc:
            raise DeliveryError(self.name, f"cannot deliver through {where}: "
                                           f"{type(exc).__name__}: {exc}") from None

    async def close(self) -> None:
        return None


class LogChannel:
    """Write alerts to the log: always works, and shows what the other channels would say."""

    _LEVELS: ClassVar[dict[str, int]] = {"info": logging.INFO, "warning": logging.WARNING,
                                         "critical": logging.ERROR}

    def __init__(self, logger: str | logging.Logger = "tokenstile.alerts", *,
                 name: str = "log") -> None:
        self.name = name
        self.logger = logging.getLogger(logger) if isinstance(logger, str) else logger

    async def send(self, alert: Alert) -> None:
        self.logger.log(self._LEVELS.get(alert.severity, logging.WARNING),
                        "alert %s [%s] %s: %s", alert.kind, alert.severity, alert.title,
                        alert.message.replace("\n", " | "),
                        extra={"alert": alert.to_dict()})

    async def close(self) -> None:
        return None


def build_channel(name: str, spec: Mapping[str, Any]) -> Channel:
    """A channel from a plain mapping, as a configuration section holds it.

    ``{"kind": "webhook", "url": …, "format": "json"|"slack", "headers": {…}}``,
    ``{"kind": "slack", "url": …}``, ``{"kind": "email", "host": …, "port": 25,
    "sender": …, "recipients": […], "starttls": false, "ssl": false, "username": …,
    "password": …}``, ``{"kind": "log"}``; every kind takes ``timeout_s`` except log.
    """
    options = dict(spec)
    kind = options.pop("kind", "webhook")
    timeout = float(options.pop("timeout_s", 10.0 if kind in ("webhook", "slack") else 15.0))
    if kind in ("webhook", "slack"):
        if "url" not in options:
            raise ValueError(f"alert channel {name!r}: a {kind} channel needs a url")
        fmt = "slack" if kind == "slack" else options.pop("format", "json")
        if fmt not in ("json", "slack"):
            raise ValueError(f"alert channel {name!r}: unknown webhook format {fmt!r}; "
                             "expected json or slack")
        return WebhookChannel(str(options["url"]), "slack" if fmt == "slack" else "json",
                              options.get("headers") or {},
                              name=name, timeout_s=timeout)
    if kind == "email":
        missing = [k for k in ("host", "sender", "recipients") if not options.get(k)]
        if missing:
            raise ValueError(f"alert channel {name!r}: an email channel needs "
                             f"{', '.join(missing)}")
        recipients = options["recipients"]
        return EmailChannel(
            str(options["host"]), int(options.get("port") or 25), str(options["sender"]),
            [recipients] if isinstance(recipients, str) else list(recipients),
            starttls=bool(options.get("starttls")), use_ssl=bool(options.get("ssl")),
            username=options.get("username"), password=options.get("password"), name=name,
            timeout_s=timeout)
    if kind == "log":
        return LogChannel(str(options.get("logger") or "tokenstile.alerts"), name=name)
    raise ValueError(f"alert channel {name!r}: unknown kind {kind!r}; expected webhook, "
                     "slack, email or log")
