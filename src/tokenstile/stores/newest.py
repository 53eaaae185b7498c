"""The listing every history table answers (alerts, reconciliation runs): newest first,
optionally where one column compares with a value, at most ``limit`` rows."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def newest_first(select: str, where: str, value: Any, limit: int,
                 mark: Callable[[int], str]) -> tuple[str, list[Any]]:
    """``select`` (``SELECT … FROM table``) with ``WHERE {where} {mark}`` when ``value`` is
    not None, newest (``ts``, then ``id``) first, and the limit (never below 0); the SQL and
    its arguments. ``mark(n)`` is the driver's placeholder for the n-th argument."""
    args: list[Any] = []
    sql = select
    if value is not None:
        args.append(value)
        sql += f" WHERE {where} {mark(len(args))}"
    args.append(max(0, int(limit)))
    sql += f" ORDER BY ts DESC, id DESC LIMIT {mark(len(args))}"
    return sql, args


def sqlite_mark(_: int) -> str:
    return "?"


def postgres_mark(n: int) -> str:
    return f"${n}"
