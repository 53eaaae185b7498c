"""Budgets per agent run or user session, without new keys.

A call that carries ``x-tokenstile-run: <id>`` belongs to that run. Every call of one run
shares one budget: the ``runs:`` section's (``budget_usd`` and/or ``budget_tokens``), which
the run's own ``x-tokenstile-run-budget`` header may lower, never raise (both apply, on the
same counter, so the tighter wins). The run's counter lives ``runs.ttl`` past its last call
(a counter TTL; nothing cleans up): an id left unused that long is forgotten.

A run id belongs to its caller: the counter is kept per key (per organization and project
for passthrough callers, who have no tokenstile key), so another key sending the same id
has a run of its own and can neither spend nor read someone else's. The ledger row keeps
the run id (``run_id``), which is what ``GET /admin/runs`` and the dashboard list.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from decimal import Decimal

from tokenstile.config import RunsConfig
from tokenstile.errors import GatewayError, bad_request
from tokenstile.limits.model import Limit
from tokenstile.limits.windows import Window
from tokenstile.types import Applied, Caller, CanonicalRequest, Unit, usd_to_nano

RUN_HEADER = "x-tokenstile-run"
RUN_BUDGET_HEADER = "x-tokenstile-run-budget"
MAX_RUN_ID = 128
# No '/': it separates the owner from the run id in the counter's scope id.
_RUN_ID = re.compile(rf"[A-Za-z0-9._:@+=~#-]{{1,{MAX_RUN_ID}}}")
_AMOUNT = re.compile(r"(\$)?\s*(\d{1,15}(?:\.\d{1,9})?)\s*(usd|tokens)?")
_HEADER_LIMITS = 256


def _invalid(header: str, value: str, expected: str) -> GatewayError:
    shown = value if len(value) <= 64 else value[:61] + "..."
    return bad_request(f"the {header} header must be {expected}, got {shown!r}",
                       param=header, code="invalid_run_header")


def default_unit(runs: RunsConfig) -> Unit | None:
    """The unit of a bare number in ``x-tokenstile-run-budget``: the configured run
    budget's, when exactly one is configured."""
    if runs.budget_usd is not None and runs.budget_tokens is None:
        return "usd"
    if runs.budget_tokens is not None and runs.budget_usd is None:
        return "tokens"
    return None


def parse_budget(value: str, runs: RunsConfig) -> tuple[Unit, int]:
    """``$0.50``, ``0.5 usd``, ``20000 tokens``, or a bare number in the configured run
    budget's unit → (unit, whole amount: nano-USD or tokens)."""
    match = _AMOUNT.fullmatch(value.strip().lower())
    expected = "an amount like $0.50, 0.5 usd or 20000 tokens"
    if match is None or (match.group(1) and match.group(3) == "tokens"):
        raise _invalid(RUN_BUDGET_HEADER, value, expected)
    dollar, number, suffix = match.groups()
    unit: Unit | None = "usd" if dollar or suffix == "usd" else \
        "tokens" if suffix == "tokens" else default_unit(runs)
    if unit is None:
        raise _invalid(RUN_BUDGET_HEADER, value, expected + " (a bare number needs one run "
                       "budget in the config, runs.budget_usd or runs.budget_tokens, to "
                       "take its unit from)")
    if unit == "usd":
        return unit, usd_to_nano(number)
    tokens = Decimal(number)
    if tokens != tokens.to_integral_value():
        raise _invalid(RUN_BUDGET_HEADER, value, "a whole number of tokens")
    return unit, int(tokens)


def read_run(headers: Mapping[str, str], runs: RunsConfig
             ) -> tuple[str | None, tuple[Unit, int] | None]:
    """The run a request names and the budget its header asks for; 400 for a header that
    cannot be read (ignoring it would leave the run less protected than asked)."""
    raw = headers.get(RUN_HEADER)
    budget = headers.get(RUN_BUDGET_HEADER)
    if raw is None:
        if budget is not None:
            raise bad_request(f"{RUN_BUDGET_HEADER} sets the budget of a run: send the run's "
                              f"id in {RUN_HEADER} too", param=RUN_HEADER,
                              code="invalid_run_header")
        return None, None
    run = raw.strip()
    if not _RUN_ID.fullmatch(run):
        raise _invalid(RUN_HEADER, raw, f"an id of 1 to {MAX_RUN_ID} letters, digits or "
                                        "._:@+=~#- (no spaces or slashes)")
    return run, (parse_budget(budget, runs) if budget is not None else None)


def looser_than_config(budget: tuple[Unit, int], runs: RunsConfig) -> bool:
    """A header budget above the configured one of its unit (it changes nothing)."""
    unit, amount = budget
    configured = runs.budget_usd if unit == "usd" else runs.budget_tokens
    if configured is None:
        return False
    return amount > (usd_to_nano(configured) if unit == "usd" else int(configured))


def owner_of(caller: Caller) -> str:
    """Whose runs these are: the key, or for passthrough callers their project."""
    if caller.key_id:
        return caller.key_id
    return f"{caller.organization}.{caller.project or ''}"


def run_scope_id(caller: Caller, run: str) -> str:
    return f"{owner_of(caller)}/{run}"


def run_of(scope_id: str) -> str:
    """The run id inside a run scope id (what a client sent)."""
    return scope_id.rsplit("/", 1)[-1]


class RunBudgets:
    """The run budgets of one config: the configured ones, and header ones as asked."""

    def __init__(self, runs: RunsConfig) -> None:
        self.config = runs
        self.window = Window("run", length_s=runs.ttl_s)
        limits = []
        if runs.budget_usd is not None:
            limits.append(self._limit("runs.budget_usd", "usd", usd_to_nano(runs.budget_usd),
                                      "runs"))
        if runs.budget_tokens is not None:
            limits.append(self._limit("runs.budget_tokens", "tokens", runs.budget_tokens,
                                      "runs"))
        self.limits = tuple(limits)
        self._asked: dict[tuple[Unit, int], Limit] = {}

    def _limit(self, name: str, unit: Unit, amount: int, origin: str) -> Limit:
        return Limit(name=name, scope="run", window=self.window, unit=unit, amount=amount,
                     origin=origin)

    def asked(self, unit: Unit, amount: int) -> Limit:
        """The limit a run's own budget header sets."""
        limit = self._asked.get((unit, amount))
        if limit is None:
            if len(self._asked) >= _HEADER_LIMITS:
                self._asked.clear()
            limit = self._asked[(unit, amount)] = self._limit(
                RUN_BUDGET_HEADER, unit, amount, "header")
        return limit

    def applied(self, caller: Caller, req: CanonicalRequest) -> list[Applied]:
        if req.run is None:
            return []
        scope_id = run_scope_id(caller, req.run)
        out = [Applied(limit, scope_id, limit.amount) for limit in self.limits]
        if req.run_budget is not None:
            limit = self.asked(*req.run_budget)
            out.append(Applied(limit, scope_id, limit.amount))
        return out
