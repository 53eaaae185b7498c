"""The ``tokenstile`` command: serve, demo, check, keys, usage, version."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click
import orjson

from tokenstile import __version__
from tokenstile.admin.remote import AdminClient, RemoteError
from tokenstile.cli_options import (
    config_option,
    duration_s,
    json_option,
    load_or_exit,
    parse_since,
)
from tokenstile.config import Config
from tokenstile.observability.logs import LOG_FORMATS
from tokenstile.prices_cli import prices
from tokenstile.reconcile.cli import reconcile
from tokenstile.stores.database import (
    Database,
    KeyRecord,
    UsageQuery,
    database_from_url,
    hash_key,
    new_key_id,
    new_key_secret,
)
from tokenstile.stores.urls import redact_url
from tokenstile.tables import format_usage_rows, render_table

T = TypeVar("T")


def _with_db(config: Config, work: Callable[[Database], Awaitable[T]]) -> T:
    async def run() -> T:
        db = database_from_url(config.storage.database)
        await db.open()
        try:
            return await work(db)
        finally:
            await db.close()

    return asyncio.run(run())


# -- a running gateway through its admin API -------------------------------------------------

url_option = click.option(
    "--url", envvar="TOKENSTILE_URL", default=None,
    help="Talk to a running gateway's admin API at this URL ($TOKENSTILE_URL) instead of "
         "the database.")
admin_key_option = click.option(
    "--admin-key", envvar="TOKENSTILE_ADMIN_KEY", default=None,
    help="The gateway's admin key, with --url ($TOKENSTILE_ADMIN_KEY).")


def _remote(url: str | None, admin_key: str | None) -> AdminClient | None:
    """The admin API client when ``--url`` is given, else None (work on the database)."""
    if not url:
        return None
    if not admin_key:
        click.echo("error: --url needs the admin key: --admin-key or $TOKENSTILE_ADMIN_KEY",
                   err=True)
        sys.exit(2)
    return AdminClient(url, admin_key)


def _api(client: AdminClient, method: str, path: str, body: dict[str, Any] | None = None,
         **params: Any) -> Any:
    try:
        return client.call(method, path, body, params)
    except RemoteError as err:
        click.echo(f"error: {err.message}", err=True)
        sys.exit(1)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", "-V", prog_name="tokenstile",
                      message="%(prog)s %(version)s")
def main() -> None:
    """tokenstile: an LLM gateway that counts, attributes, budgets and records every call."""


@main.command()
def version() -> None:
    """Print the version."""
    click.echo(f"tokenstile {__version__}")


@main.command()
@config_option
@url_option
@admin_key_option
def check(config_path: str | None, url: str | None, admin_key: str | None) -> None:
    """Validate a configuration file and print every error with the path of the bad field;
    with --url, also show the running gateway's config and its last reload error."""
    client = _remote(url, admin_key)
    config = None
    if client is None or config_path:
        config = load_or_exit(config_path)
        source = config_path or os.environ.get("TOKENSTILE_CONFIG") or "<defaults>"
        upstreams = ", ".join(f"{name} ({u.kind} at {u.base_url})"
                              for name, u in config.upstreams.items())
        click.echo(f"{source}: ok")
        from tokenstile.config import config_warnings
        from tokenstile.unpriced import unpriced_models

        for warning in config_warnings(config):
            click.echo(f"  warning: {warning}")
        for unpriced in unpriced_models(config):
            click.echo(f"  unpriced: {unpriced.message()}")
        click.echo(f"  upstreams: {upstreams}")
        click.echo(f"  counters:  {redact_url(config.storage.counters)}")
        click.echo(f"  database:  {redact_url(config.storage.database)}")
    if client is None:
        return
    status = _api(client, "GET", "/status")["config"]
    click.echo(f"gateway {client.base.removesuffix('/admin')}: config "
               f"{status['source'] or '<defaults>'}, generation {status['generation']}")
    for name in status["pending_restart"]:
        click.echo(f"  {name} changed: applies at the next restart")
    if config is not None and config_path:
        from tokenstile.admin.redact import effective_config
        from tokenstile.gateway.reload import restart_only_differences

        running = _api(client, "GET", "/config")["config"]
        for name in restart_only_differences(effective_config(config), running):
            if name not in status["pending_restart"]:
                click.echo(f"  {name} differs in {config_path}: a reload keeps the running "
                           "value; it applies at the next restart")
    if status["status"] != "ok":
        click.echo("error: the last reload was refused; the previous config keeps serving",
                   err=True)
        for line in status["errors"]:
            click.echo(f"  {line}", err=True)
        sys.exit(2)


@main.command()
@config_option
@click.option("--database", "url", default=None,
              help="Database URL (default: the configuration's storage.database).")
def migrate(config_path: str | None, url: str | None) -> None:
    """Create or upgrade the database schema and print its version.

    Gateways also migrate when they start (under a lock, so many can start at once); run
    this to do it ahead of a deploy, or with a more privileged user.
    """
    from tokenstile.stores.counters import StoreConfigError, StoreUnavailable
    from tokenstile.stores.spool import database_label

    url = url or load_or_exit(config_path).storage.database

    async def run() -> str:
        db = database_from_url(url)
        try:
            step = getattr(db, "migrate", None)
            if step is None:  # SQLite: the schema is created on open, without versions
                await db.open()
                return "schema up to date"
            return f"schema version {await step()}"
        finally:
            await db.close()

    try:
        outcome = asyncio.run(run())
    except (StoreConfigError, StoreUnavailable) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    click.echo(f"{database_label(url)}: {outcome}")


@main.command()
@config_option
@click.option("--host", default=None, help="Address to listen on (default 127.0.0.1).")
@click.option("--port", type=int, default=None, help="Port to listen on (default 8700).")
@click.option("--workers", type=int, default=None, help="Worker processes (default 1).")
@click.option("--log-format", type=click.Choice(LOG_FORMATS), default="text",
              show_default=True,
              help="json: every log record as one JSON line on stderr, with one access "
                   "line per request (id, caller, models, tokens, cost, outcome, latency).")
def serve(config_path: str | None, host: str | None, port: int | None,
          workers: int | None, log_format: str) -> None:
    """Run the gateway."""
    import logging

    import uvicorn

    from tokenstile.observability.logs import configure, log_config
    from tokenstile.preflight import PreflightError, check_port, check_stores

    configure(log_format)
    config = load_or_exit(config_path)
    if config_path:
        os.environ["TOKENSTILE_CONFIG"] = str(Path(config_path).resolve())
    host = host or config.server.host
    port = config.server.port if port is None else port
    workers = workers or config.server.workers
    try:
        check_port(host, port)
        check_stores(config)
    except PreflightError as err:
        _fail(log_format, str(err))
    banner = (f"tokenstile {__version__} serving on http://{host}:{port}/v1 "
              f"({workers} worker{'s' if workers > 1 else ''})")
    if log_format == "json":
        logging.getLogger("tokenstile").info(banner)
    else:
        click.echo(banner, err=True)
    from tokenstile.gateway.http_guard import PROTOCOL  # httptools with header bounds

    uvicorn.run("tokenstile.app:create_app_from_env", factory=True, host=host, port=port,
                workers=workers, loop="uvloop", http=PROTOCOL, ws="none", access_log=False,
                log_level="warning", timeout_graceful_shutdown=10,
                log_config=log_config(log_format) or uvicorn.config.LOGGING_CONFIG)


def _fail(log_format: str, message: str) -> NoReturn:
    """Exit 1 with one line: ``error: …``, or a JSON log record with ``--log-format json``."""
    if log_format == "json":
        import logging

        logging.getLogger("tokenstile").error(message)
    else:
        click.echo(f"error: {message}", err=True)
    sys.exit(1)


# -- keys ------------------------------------------------------------------------------------


@main.group()
def keys() -> None:
    """Create, list, revoke and rotate tokenstile keys."""


def _parse_expiry(text: str | None) -> float | None:
    if text is None:
        return None
    ahead = duration_s(text)
    if ahead is not None:
        return time.time() + ahead
    return parse_since(text, now=0.0)


@keys.command("create")
@config_option
@click.option("--project", "-p", required=True, help="Project the key's calls count against.")
@click.option("--user", "-u", default=None, help="User the key belongs to.")
@click.option("--org", "organization", default=None, help="Organization (default: config's).")
@click.option("--team", default=None)
@click.option("--tier", default=None, help="User tier, e.g. premium or free.")
@click.option("--feature", default=None, help="Bind the key to one feature.")
@click.option("--name", default=None, help="A label to recognise the key by.")
@click.option("--models", default=None, help="Comma-separated models or globs it may use.")
@click.option("--expires", default=None, help="Expiry: a duration (30d) or an ISO date.")
@click.option("--passthrough", is_flag=True, help="May forward its own provider key.")
@json_option
@url_option
@admin_key_option
def keys_create(config_path: str | None, project: str, user: str | None,
                organization: str | None, team: str | None, tier: str | None,
                feature: str | None, name: str | None, models: str | None,
                expires: str | None, passthrough: bool, as_json: bool, url: str | None,
                admin_key: str | None) -> None:
    """Create a key; its secret is printed once and stored only as a hash."""
    allowed = [m.strip() for m in models.split(",") if m.strip()] if models else None
    client = _remote(url, admin_key)
    if client is not None:
        created = _api(client, "POST", "/keys", {
            "project": project, "user": user, "organization": organization, "team": team,
            "tier": tier, "feature": feature, "name": name, "allowed_models": allowed,
            "passthrough": passthrough, "expires_at": _parse_expiry(expires)})
        shown, key_id, secret = created, created["id"], created["key"]
    else:
        config = load_or_exit(config_path)
        secret = new_key_secret()
        record = KeyRecord(
            id=new_key_id(), hash=hash_key(secret), prefix=secret[:7], name=name,
            organization=organization or config.organization.name, project=project,
            team=team, user=user, tier=tier, feature=feature, allowed_models=allowed,
            passthrough=passthrough, created_at=time.time(),
            expires_at=_parse_expiry(expires),
        )
        _with_db(config, lambda db: db.create_key(record))
        shown, key_id = {**record.public(), "key": secret}, record.id
    if as_json:
        click.echo(orjson.dumps(shown).decode())
        return
    click.echo(secret)
    click.echo(f"created {key_id} for project {project!r}"
               + (f", user {user!r}" if user else "")
               + "; the key is shown only this once", err=True)


@keys.command("list")
@config_option
@click.option("--all", "include_revoked", is_flag=True, help="Include revoked keys.")
@click.option("--project", default=None, help="Only this project's keys.")
@json_option
@url_option
@admin_key_option
def keys_list(config_path: str | None, include_revoked: bool, project: str | None,
              as_json: bool, url: str | None, admin_key: str | None) -> None:
    """List keys (never their secrets)."""
    client = _remote(url, admin_key)
    if client is not None:
        rows = _api(client, "GET", "/keys", state="all" if include_revoked else "active",
                    project=project)["data"]
    else:
        config = load_or_exit(config_path)
        filters = {"project": project} if project else None
        records = _with_db(config, lambda db: db.list_keys(include_revoked, filters))
        now = time.time()
        rows = [{**r.public(), "state": "revoked" if r.revoked_at else
                 "active" if r.active(now) else "expired"} for r in records]
    if as_json:
        click.echo(orjson.dumps(rows).decode())
        return
    for row in rows:
        row["created"] = datetime.fromtimestamp(row["created_at"], UTC).strftime(
            "%Y-%m-%d %H:%M")
    click.echo(render_table(rows, [("id", "ID"), ("prefix", "PREFIX"), ("name", "NAME"),
                                   ("organization", "ORG"), ("project", "PROJECT"),
                                   ("user", "USER"), ("tier", "TIER"), ("state", "STATE"),
                                   ("created", "CREATED")], empty="(no keys)"))


@keys.command("revoke")
@config_option
@click.argument("key_id")
@url_option
@admin_key_option
def keys_revoke(config_path: str | None, key_id: str, url: str | None,
                admin_key: str | None) -> None:
    """Revoke a key by its id; it stops working within a second everywhere."""
    client = _remote(url, admin_key)
    if client is not None:
        _api(client, "POST", f"/keys/{_path(key_id)}/revoke")
    else:
        config = load_or_exit(config_path)
        record = _with_db(config, lambda db: db.update_key(key_id, revoked_at=time.time()))
        if record is None:
            click.echo(f"error: no key with id {key_id!r}", err=True)
            sys.exit(1)
    click.echo(f"revoked {key_id}")


@keys.command("rotate")
@config_option
@click.argument("key_id")
@url_option
@admin_key_option
def keys_rotate(config_path: str | None, key_id: str, url: str | None,
                admin_key: str | None) -> None:
    """Give a key a new secret (same id, same bindings); the old secret stops working."""
    client = _remote(url, admin_key)
    if client is not None:
        secret = _api(client, "POST", f"/keys/{_path(key_id)}/rotate")["key"]
    else:
        config = load_or_exit(config_path)
        secret = new_key_secret()
        record = _with_db(config, lambda db: db.update_key(key_id, hash=hash_key(secret),
                                                            prefix=secret[:7]))
        if record is None:
            click.echo(f"error: no key with id {key_id!r}", err=True)
            sys.exit(1)
    click.echo(secret)
    click.echo(f"rotated {key_id}; the new key is shown only this once", err=True)


# -- usage -----------------------------------------------------------------------------------

@main.command()
@config_option
@click.option("--by", "group_by", default="project",
              help="Group by: comma-separated of project, user, model, feature, provider, "
                   "… or none.")
@click.option("--since", default="30d", help="Start: a duration (7d, 12h) or an ISO date.")
@click.option("--until", default=None, help="End: an ISO date (default now).")
@click.option("--bucket", type=click.Choice(["hour", "day", "month"]), default=None)
@click.option("--project", default=None, help="Only this project.")
@click.option("--csv", "as_csv", is_flag=True, help="Print CSV (for spreadsheets).")
@json_option
@url_option
@admin_key_option
def usage(config_path: str | None, group_by: str, since: str, until: str | None,
          bucket: str | None, project: str | None, as_csv: bool, as_json: bool,
          url: str | None, admin_key: str | None) -> None:
    """Summarise recorded usage from the ledger."""
    aliases = {"model": "served_model", "key": "key_id", "org": "organization"}
    groups = [] if group_by in ("", "none") else \
        [aliases.get(g.strip(), g.strip()) for g in group_by.split(",") if g.strip()]
    start, end = parse_since(since), parse_since(until) if until else None
    client = _remote(url, admin_key)
    if client is not None:
        answer = _api(client, "GET", "/usage", since=start, until=end, group_by=groups,
                      bucket=bucket, project=project, format="csv" if as_csv else "json")
        if as_csv:
            click.echo(answer, nl=False)
            return
        rows = answer["data"]
    else:
        from tokenstile.admin.usage import by_provider, ledger_groups, upstream_providers

        config = load_or_exit(config_path)
        query = UsageQuery(since=start, until=end, group_by=ledger_groups(groups),
                           bucket=bucket, tz=config.server.timezone,
                           filters={"project": project} if project else {})
        try:
            query.validate()
        except ValueError as exc:
            raise click.BadParameter(str(exc)) from None
        rows = by_provider(_with_db(config, lambda db: db.usage(query)), groups, bucket,
                           upstream_providers(config))
    if as_csv:
        from tokenstile.admin.usage import usage_csv

        click.echo(usage_csv(rows, groups, bucket), nl=False)
        return
    if as_json:
        click.echo(orjson.dumps(rows).decode())
        return
    click.echo(format_usage_rows(rows, groups, bucket))


@main.command()
@config_option
@click.option("--policy", default=None, help="Only requests this policy blocked or flagged.")
@click.option("--key", "key_id", default=None, help="Only this key (its id).")
@click.option("--project", default=None, help="Only this project.")
@click.option("--since", default="7d", help="Start: a duration (7d, 12h) or an ISO date.")
@click.option("--until", default=None, help="End: an ISO date (default now).")
@click.option("--limit", type=click.IntRange(1, 10_000), default=100, show_default=True)
@json_option
@url_option
@admin_key_option
def flagged(config_path: str | None, policy: str | None, key_id: str | None,
            project: str | None, since: str, until: str | None, limit: int,
            as_json: bool, url: str | None, admin_key: str | None) -> None:
    """List blocked, rewritten and flagged requests with their reasons, newest first."""
    from tokenstile.policies import flagged as listing

    start, end = parse_since(since), parse_since(until) if until else None
    client = _remote(url, admin_key)
    if client is not None:
        items = _api(client, "GET", "/flagged", policy=policy, key_id=key_id,
                     project=project, since=start, until=end, limit=limit)["data"]
    else:
        config = load_or_exit(config_path)
        items = _with_db(config, lambda db: listing.flagged(
            db, limit, policy=policy, key_id=key_id, project=project, since=start,
            until=end))
    click.echo(orjson.dumps(items).decode() if as_json else listing.render(items))


@main.command()
@click.argument("state", type=click.Choice(["off", "on"]))
@click.argument("scope", type=click.Choice(["feature", "project", "key", "model"]))
@click.argument("name")
@click.option("--reason", default=None, help="Shown to callers while it is off.")
@config_option
@url_option
@admin_key_option
def switch(state: str, scope: str, name: str, reason: str | None,
           config_path: str | None, url: str | None, admin_key: str | None) -> None:
    """Switch a feature, project, key or model off or on; every gateway sees it within a
    second, without a restart."""
    from tokenstile.limits.overrides import switch_target
    from tokenstile.stores.database import Override

    value: dict[str, Any] = {"enabled": state == "on"}
    if reason:
        value["reason"] = reason
    client = _remote(url, admin_key)
    if client is not None:
        _api(client, "PUT", f"/overrides/switch/{scope}/{_path(name)}", value)
    else:
        config = load_or_exit(config_path)
        override = Override("switch", switch_target(scope, name), value, time.time(), "cli")
        _with_db(config, lambda db: db.set_override(override))
    click.echo(f"{scope} {name!r} switched {state}")


def _local_budgets(config: Config, ids: tuple[str, ...]) -> list[dict[str, Any]]:
    from tokenstile.limits.model import compile_limits
    from tokenstile.limits.overrides import apply_limit_overrides
    from tokenstile.limits.status import budget_status
    from tokenstile.stores.counters import counter_store_from_url
    from tokenstile.stores.shards import status_tenants

    known: dict[str, list[str]] = {"organization": [config.organization.name]}
    for item in ids:
        scope, _, value = item.partition("=")
        known.setdefault(scope, []).append(value)

    async def work(db: Database) -> list[dict[str, Any]]:
        overrides = await db.list_overrides()
        limits = apply_limit_overrides(compile_limits(config), overrides)
        counters = counter_store_from_url(config.storage.counters)
        try:
            rows = await budget_status(limits, counters, time.time(), known,
                                       frozenset(o.target for o in overrides
                                                 if o.kind == "limit"),
                                       status_tenants(config, getattr(counters, "shard_by",
                                                                      None)))
        finally:
            await counters.close()
        return [r.as_dict() for r in rows]

    return _with_db(config, work)


def _path(name: str) -> str:
    from urllib.parse import quote

    return quote(name, safe="")


def _amount_text(value: int, money: bool) -> str:
    return f"${value / 1e9:,.2f}" if money else f"{value:,}"


@main.command()
@config_option
@click.option("--id", "ids", multiple=True,
              help="Also show per-id limits for SCOPE=ID (e.g. --id user=alice).")
@json_option
@url_option
@admin_key_option
def budgets(config_path: str | None, ids: tuple[str, ...], as_json: bool, url: str | None,
            admin_key: str | None) -> None:
    """Every limit with its usage in the current window and when it resets."""
    client = _remote(url, admin_key)
    if client is not None:
        rows = _api(client, "GET", "/budgets", id=list(ids))["data"]
    else:
        rows = _local_budgets(load_or_exit(config_path), ids)
    if as_json:
        click.echo(orjson.dumps(rows).decode())
        return
    for row in rows:
        money = row["unit"] == "usd"
        row["limit"] = _amount_text(row["hard"], money) + (" *" if row["overridden"] else "")
        row["usage"] = _amount_text(row["used"], money)
        row["pct"] = f"{row['utilization'] * 100:.1f}%"
        row["who"] = f"{row['scope']}:{row['scope_id']}"
    click.echo(render_table(rows, [("name", "LIMIT"), ("who", "SCOPE"), ("window", "WINDOW"),
                                   ("unit", "UNIT"), ("usage", "USED"), ("limit", "OF"),
                                   ("pct", "%"), ("resets", "RESETS")],
                            empty="(no budgets configured)"))


@main.command()
@click.option("--requests", "count", type=int, default=6, help="How many scripted calls.")
@click.option("--keep", is_flag=True, help="Keep the demo database afterwards.")
def demo(count: int, keep: bool) -> None:
    """Run the gateway against a built-in fake upstream and show what it records."""
    from tokenstile.demo import run_demo

    sys.exit(run_demo(count=count, keep=keep, echo=click.echo))


# Commands kept in modules of their own register themselves on ``main``.

main.add_command(prices)
main.add_command(reconcile)

if __name__ == "__main__":  # pragma: no cover
    main()
