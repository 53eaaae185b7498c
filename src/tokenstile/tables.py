"""Plain-text tables for the terminal, and the number formats they use."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from tokenstile.types import NANO_PER_USD


def usd(nano: int | None) -> str:
    value = (nano or 0) / NANO_PER_USD
    if value and abs(value) < 0.01:
        return f"${value:.6f}"
    return f"${value:,.4f}"


def integer(value: Any) -> str:
    return f"{int(value or 0):,}"


def render_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[tuple[str, str]],
                 empty: str = "(no rows)") -> str:
    """``columns`` are (key, heading) pairs; numbers right-aligned, text left-aligned."""
    if not rows:
        return empty
    cells = [[_cell(row.get(key)) for key, _ in columns] for row in rows]
    headings = [heading for _, heading in columns]
    widths = [max(len(headings[i]), *(len(c[i]) for c in cells)) for i in range(len(columns))]
    numeric = [all(_is_number(row.get(key)) for row in rows) for key, _ in columns]

    def line(values: Sequence[str]) -> str:
        parts = [v.rjust(w) if num else v.ljust(w)
                 for v, w, num in zip(values, widths, numeric, strict=True)]
        return "  ".join(parts).rstrip()

    out = [line(headings), line(["-" * w for w in widths])]
    out.extend(line(c) for c in cells)
    return "\n".join(out)


def _is_number(value: Any) -> bool:
    if isinstance(value, int | float):
        return True
    return isinstance(value, str) and value[:1] in "$0123456789-" and any(ch.isdigit()
                                                                          for ch in value)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.2f}"
    return str(value)


USAGE_COLUMNS = [("requests", "REQUESTS"), ("input_tokens", "INPUT"),
                 ("cached_input_tokens", "CACHED"), ("output_tokens", "OUTPUT"),
                 ("cost", "COST"), ("blocked", "BLOCKED")]


def format_usage_rows(rows: Sequence[Mapping[str, Any]], group_by: Sequence[str],
                      bucket: str | None = None) -> str:
    """The usage table ``tokenstile usage`` and the demo print."""
    shown = []
    for row in rows:
        item = dict(row)
        item["cost"] = usd(row["cost_nano"])
        for name in ("input_tokens", "cached_input_tokens", "output_tokens"):
            item[name] = integer(row[name])
        shown.append(item)
    columns = ([("bucket", bucket.upper())] if bucket else []) + \
        [(g, g.upper().replace("_", " ")) for g in group_by] + USAGE_COLUMNS
    return render_table(shown, columns, empty="(no usage recorded in this range)")
