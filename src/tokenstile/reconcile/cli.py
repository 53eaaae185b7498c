"""``tokenstile reconcile``: the provider's own reports against the ledger, as a table."""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any

import click
import orjson

from tokenstile.cli_options import config_option, json_option, load_or_exit, parse_since
from tokenstile.config import Config
from tokenstile.reconcile.reports import PROVIDERS, ReconcileError
from tokenstile.reconcile.run import reconcile as run_reconcile
from tokenstile.reconcile.run import send_alert
from tokenstile.stores.records import ReconcileRun, record_store_from_url
from tokenstile.tables import render_table, usd


def _signed_usd(nano: int | None) -> str:
    if nano is None:
        return "-"
    text = usd(abs(nano))
    return ("-" if nano < 0 else "+" if nano > 0 else "") + text


def format_run(run: ReconcileRun) -> str:
    rows: list[dict[str, Any]] = []
    for r in run.rows:
        rows.append({
            "day": r["day"], "model": r["model"],
            "ledger_tokens": r["ledger_tokens"], "provider_tokens": r["provider_tokens"],
            "drift_tokens": f"{r['drift_tokens']:+,}" if r["drift_tokens"] else "0",
            "ledger_usd": usd(r["ledger_nano"]),
            "provider_usd": "-" if r["provider_nano"] is None else usd(r["provider_nano"]),
            "drift_usd": _signed_usd(r["drift_nano"]),
            "drift_pct": f"{r['drift_percent']:+.2f}%" if r["drift_percent"] else "0%"})
    table = render_table(rows, [
        ("day", "DAY"), ("model", "MODEL"), ("ledger_tokens", "LEDGER TOKENS"),
        ("provider_tokens", "PROVIDER TOKENS"), ("drift_tokens", "DRIFT TOKENS"),
        ("ledger_usd", "LEDGER USD"), ("provider_usd", "PROVIDER USD"),
        ("drift_usd", "DRIFT USD"), ("drift_pct", "DRIFT %")],
        empty="(no usage on either side in this period)")
    total = (f"total: ledger {usd(run.ledger_nano)} / {run.ledger_tokens:,} tokens, "
             f"{run.provider} {usd(run.provider_nano)} / {run.provider_tokens:,} tokens, "
             f"drift {_signed_usd(run.drift_nano)} / {run.drift_tokens:+,} tokens "
             f"(run {run.id})")
    return f"{table}\n{total}"


async def _run(config: Config, provider: str, since: float, until: float
               ) -> tuple[ReconcileRun, bool]:
    store = record_store_from_url(config.storage.database)
    await store.open()
    try:
        run, over = await run_reconcile(config, provider, since, until, store)
    finally:
        await store.close()
    alerted = await send_alert(config, run, over) if over else False
    return run, alerted


@click.command()
@config_option
@click.option("--provider", type=click.Choice(PROVIDERS), required=True,
              help="Whose usage and cost reports to read (with its admin key from the config).")
@click.option("--since", default="7d", show_default=True,
              help="Start: a duration (7d, 12h) or an ISO date; whole UTC days are compared.")
@click.option("--until", default=None, help="End: an ISO date (default now).")
@json_option
def reconcile(config_path: str | None, provider: str, since: str, until: str | None,
              as_json: bool) -> None:
    """Compare the provider's own usage and cost reports with the ledger, per day and model;
    store the run, and alert when the drift passes reconcile.alert_above_usd / _percent."""
    config = load_or_exit(config_path)
    start = parse_since(since)
    end = parse_since(until) if until else time.time()
    try:
        run, alerted = asyncio.run(_run(config, provider, start, end))
    except ReconcileError as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(1)
    if as_json:
        click.echo(orjson.dumps({**run.to_dict(), "alert_sent": alerted}).decode())
        return
    click.echo(format_run(run))
    if run.alerted:
        click.echo(f"drift over the alert threshold: "
                   f"{'alert sent' if alerted else 'alert already sent for this drift'}")
