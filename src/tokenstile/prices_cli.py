"""``tokenstile prices show MODEL`` and ``tokenstile prices diff``."""

from __future__ import annotations

import math
import sys
from decimal import Decimal
from typing import Any

import click
import orjson

from tokenstile.cli_options import config_option, json_option, load_or_exit
from tokenstile.errors import GatewayError
from tokenstile.gateway.routing import Router
from tokenstile.price_table import (
    PRICE_FIELDS,
    genai_prices_version,
    price_summary,
    price_versions,
    pricer_from_config,
)
from tokenstile.routed import routed_prices
from tokenstile.tables import render_table


def _n(value: Decimal | None) -> str:
    return "-" if value is None else format(value.normalize(), "f")


def _json(value: Any) -> Any:
    return str(value) if isinstance(value, Decimal) else value


@click.group()
def prices() -> None:
    """The price table: its versions, and the config's prices against genai-prices'."""


@prices.command("show")
@config_option
@click.argument("model")
@click.option("--provider", default=None,
              help="Whose price (default: the provider of the upstream the model routes to).")
@json_option
def show(config_path: str | None, model: str, provider: str | None, as_json: bool) -> None:
    """List every version of MODEL's price (USD per million tokens), with where each
    comes from and from when it applies."""
    config = load_or_exit(config_path)
    sent = model
    if provider is None:
        try:
            target = Router(config).resolve(model)
            provider, sent = target.provider, target.model
        except GatewayError:
            provider = None
    versions = price_versions(pricer_from_config(config), sent, provider)
    if as_json:
        click.echo(orjson.dumps([
            {"effective_from": None if not math.isfinite(v.start) else v.start,
             "since": v.since, "source": v.source,
             **{k: _json(x) for k, x in price_summary(v.price).items()}}
            for v in versions]).decode())
        return
    rows = [{"since": v.since, **{k: _n(x) for k, x in price_summary(v.price).items()},
             "source": v.source if v.price is not None else "no price"} for v in versions]
    click.echo(f"{model}" + (f" (sent as {sent})" if sent != model else "")
               + f", provider {provider or 'unknown'}:")
    click.echo(render_table(rows, [("since", "FROM"), *((f, f.upper()) for f in PRICE_FIELDS),
                                   ("source", "SOURCE")]))


@prices.command("diff")
@config_option
@json_option
def diff(config_path: str | None, as_json: bool) -> None:
    """For every routed model, genai-prices' price (the installed package) against the
    price this configuration bills (overrides and adjustments applied)."""
    config = load_or_exit(config_path)
    items = list(routed_prices(config))
    if as_json:
        click.echo(orjson.dumps([
            {"model": d.model, "provider": d.provider, "status": d.status,
             "genai_prices": {k: _json(v) for k, v in price_summary(d.package).items()},
             "config": {k: _json(v) for k, v in price_summary(d.configured).items()}}
            for d in items]).decode())
        return
    rows: list[dict[str, Any]] = []
    for d in items:
        pkg, cfg = price_summary(d.package), price_summary(d.configured)
        rows.append({"model": d.model, "provider": d.provider or "-", "status": d.status,
                     **{f"{k}": f"{_n(pkg[k])} -> {_n(cfg[k])}" if pkg[k] != cfg[k]
                        else _n(cfg[k]) for k in ("input", "output", "cached_input")}})
    click.echo(f"genai-prices {genai_prices_version()} -> this configuration "
               "(USD per million tokens):")
    click.echo(render_table(rows, [("model", "MODEL"), ("provider", "PROVIDER"),
                                   ("status", "STATUS"), ("input", "INPUT"),
                                   ("output", "OUTPUT"), ("cached_input", "CACHED INPUT")],
                            empty="(no routed models)"))
    if any(d.status == "unpriced" for d in items):
        sys.exit(1)
