"""What the command groups share: the ``--config`` and ``--json`` options, loading the
configuration or exiting with its errors, and reading ``--since``-style times."""

from __future__ import annotations

import os
import re
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import click

from tokenstile.config import Config, ConfigError, load_config

config_option = click.option(
    "--config", "-c", "config_path", type=click.Path(dir_okay=False), default=None,
    help="YAML configuration file (default: $TOKENSTILE_CONFIG, else built-in defaults).",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")


def load_or_exit(config_path: str | None) -> Config:
    chosen = config_path or os.environ.get("TOKENSTILE_CONFIG")
    if chosen and not Path(chosen).is_file():
        where = "" if config_path else " ($TOKENSTILE_CONFIG)"
        click.echo(f"error: no configuration file at {chosen}{where}: check the path, or "
                   "omit --config to start with the built-in defaults", err=True)
        sys.exit(2)
    try:
        return load_config(config_path)
    except ConfigError as err:
        click.echo(f"error: {err.source}: the configuration is not valid", err=True)
        for line in err.errors:
            click.echo(f"  {line}", err=True)
        sys.exit(2)


def duration_s(text: str) -> int | None:
    """``90s``, ``30m``, ``12h``, ``7d``, ``2w`` in seconds; None when ``text`` is none of these."""
    match = re.fullmatch(r"(\d+)([smhdw])", text.strip())
    if not match:
        return None
    scale = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[match.group(2)]
    return int(match.group(1)) * scale


def parse_since(text: str, now: float | None = None) -> float:
    """``7d``, ``12h``, ``30m``, ``2w`` ago, or an ISO date/time (UTC unless it says)."""
    now = time.time() if now is None else now
    ago = duration_s(text)
    if ago is not None:
        return now - ago
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise click.BadParameter(f"expected a duration like 7d or 12h, or an ISO date; "
                                 f"got {text!r}") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()
