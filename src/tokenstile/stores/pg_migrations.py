"""The PostgreSQL schema as ordered, append-only steps.

Each step runs once, in order, inside the transaction that holds the migration lock and
records it in ``tokenstile_schema_version``. A released step is never edited: a change
is a new step at the end, written so that gateways still running the previous version
keep working (add columns and tables; do not drop or rename what they use).

Timestamps are ``double precision`` seconds since the epoch, as in SQLite, so both
backends filter and bucket the same rows identically; money is ``bigint`` nano-USD. Text
that is compared for ordering (row and key ids, override names) uses the ``C`` collation
so that it sorts byte-wise, as SQLite does.
"""

from __future__ import annotations

from dataclasses import dataclass

from tokenstile.stores.responses import PG_SCHEMA


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


ROLLUP_DIMENSIONS = ("served_model", "user", "feature", "team")

# floor(ts / 3600) * 3600, exact even where the division rounds up across an hour boundary.
_HOUR_OF = ("(floor(n.ts / 3600)::bigint * 3600 - CASE WHEN floor(n.ts / 3600) * 3600 > n.ts "
            "THEN 3600 ELSE 0 END)")
_MEASURES = ("input_tokens", "cached_input_tokens", "output_tokens", "reasoning_tokens",
             "cost_nano", "saved_nano", "blocked")
_KEY = "dim, hour, organization, project, value"
SHARDS = 16


def _aggregate(source: str, shard: str, sign: str = "") -> str:
    """Add the rows of ``source`` (the ledger, or a statement's new rows) to the rollup:
    one row per UTC hour × organization × project × dimension value, for the totals
    (``dim = ''``), each of ``ROLLUP_DIMENSIONS``, each tag (``team=search``) and each
    degradation. NULL is stored as ''.

    Each batch adds into one of ``SHARDS`` copies of its rows (``shard``, picked at random
    per batch; readers sum them), so that gateways writing the same hour and project at
    once rarely wait for each other's row locks; and it upserts in key order, so that two
    batches that do meet lock rows in the same order and cannot deadlock.

    ``sign`` ``-`` takes the rows out instead (rows a replacement deleted); readers drop a
    group whose requests sum to zero across the shards."""
    dims = "\n".join(f"        UNION ALL SELECT '{d}', coalesce(n.\"{d}\", '')"
                      for d in ROLLUP_DIMENSIONS)
    sums = ", ".join(f"{sign}sum({m})" for m in _MEASURES)
    updates = ", ".join(f"{m} = u.{m} + excluded.{m}" for m in ("requests", *_MEASURES))
    return f"""
INSERT INTO usage_hourly AS u ({_KEY}, shard, requests, {", ".join(_MEASURES)})
SELECT {_KEY}, {shard}, {sign}count(*), {sums} FROM (
    SELECT d.dim, {_HOUR_OF} AS hour, coalesce(n.organization, '') AS organization,
           coalesce(n.project, '') AS project, d.value, n.input_tokens,
           n.cached_input_tokens, n.output_tokens, n.reasoning_tokens, n.cost_nano,
           n.saved_nano, (n.outcome = 'blocked')::int AS blocked
    FROM {source} AS n
    CROSS JOIN LATERAL (
        SELECT '' AS dim, '' AS value
{dims}
        UNION ALL SELECT 'tag', t.key || '=' || t.value FROM jsonb_each_text(
            CASE WHEN jsonb_typeof(n.tags) = 'object' THEN n.tags END) AS t
        UNION ALL SELECT 'degraded', g.value FROM jsonb_array_elements_text(
            CASE WHEN jsonb_typeof(n.degraded) = 'array' THEN n.degraded END) AS g(value)
    ) AS d
) AS e
GROUP BY {_KEY} ORDER BY {_KEY}
ON CONFLICT ({_KEY}, shard) DO UPDATE SET {updates}"""


def _rollup_sql() -> str:
    """Why: the dashboard and the alert rules aggregate a month of ledger many times an
    hour; a statement trigger keeps this rollup, so those reads touch hours, not rows.
    Transition tables hold only rows actually inserted, so a retried batch (``ON CONFLICT
    DO NOTHING``) is never counted twice."""
    measures = ",\n    ".join(f"{m} bigint NOT NULL" for m in ("requests", *_MEASURES))
    return f"""
CREATE TABLE usage_hourly (
    dim text COLLATE "C" NOT NULL,
    hour bigint NOT NULL,
    organization text COLLATE "C" NOT NULL,
    project text COLLATE "C" NOT NULL,
    value text COLLATE "C" NOT NULL,
    shard smallint NOT NULL,
    {measures},
    PRIMARY KEY ({_KEY}, shard)
);
CREATE FUNCTION tokenstile_usage_hourly() RETURNS trigger LANGUAGE plpgsql
SET search_path FROM CURRENT AS $fn$
DECLARE
    batch_shard smallint := floor(random() * {SHARDS});
BEGIN
{_aggregate("new_rows", "batch_shard")};
    RETURN NULL;
END
$fn$;
CREATE TRIGGER ledger_usage_hourly AFTER INSERT ON ledger
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT
    EXECUTE FUNCTION tokenstile_usage_hourly();
{_aggregate("ledger", "0")};
"""


def _replacement_sql() -> str:
    """A provisional ledger row (written at its estimate by crash recovery) is replaced by
    its request's own row with an ``INSERT … ON CONFLICT (id) DO UPDATE``: the rollup takes
    the old row out and puts the new one in, from the statement's transition tables."""
    return f"""
CREATE OR REPLACE FUNCTION tokenstile_usage_hourly_replaced() RETURNS trigger
LANGUAGE plpgsql
SET search_path FROM CURRENT AS $fn$
DECLARE
    batch_shard smallint := floor(random() * {SHARDS});
BEGIN
{_aggregate("old_rows", "batch_shard", "-")};
{_aggregate("new_rows", "batch_shard")};
    RETURN NULL;
END
$fn$;
DROP TRIGGER IF EXISTS ledger_usage_hourly_replaced ON ledger;
CREATE TRIGGER ledger_usage_hourly_replaced AFTER UPDATE ON ledger
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT
    EXECUTE FUNCTION tokenstile_usage_hourly_replaced();
"""


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "ledger, api keys, overrides", """
CREATE TABLE ledger (
    id text COLLATE "C" PRIMARY KEY,
    ts double precision NOT NULL,
    key_id text, organization text, project text, team text, "user" text, end_user text,
    feature text, tags jsonb, api text, requested_model text, served_model text,
    upstream text,
    input_tokens bigint NOT NULL DEFAULT 0,
    cached_input_tokens bigint NOT NULL DEFAULT 0,
    cache_write_tokens bigint NOT NULL DEFAULT 0,
    output_tokens bigint NOT NULL DEFAULT 0,
    reasoning_tokens bigint NOT NULL DEFAULT 0,
    cost_nano bigint NOT NULL DEFAULT 0,
    estimated boolean NOT NULL DEFAULT false,
    status integer NOT NULL,
    outcome text NOT NULL,
    block_reason text, flags jsonb, latency_ms double precision, ttfb_ms double precision,
    streamed boolean NOT NULL DEFAULT false,
    trace_id text, degraded jsonb, cache text,
    saved_nano bigint NOT NULL DEFAULT 0,
    detail jsonb
);
CREATE INDEX ledger_ts ON ledger (ts);
CREATE INDEX ledger_project_ts ON ledger (project, ts);
CREATE INDEX ledger_outcome_ts ON ledger (outcome, ts);

CREATE TABLE api_keys (
    id text COLLATE "C" PRIMARY KEY,
    hash text NOT NULL UNIQUE,
    prefix text NOT NULL, name text, organization text NOT NULL, project text, team text,
    "user" text, tier text, feature text, allowed_models jsonb,
    passthrough boolean NOT NULL DEFAULT false, limits jsonb,
    created_at double precision NOT NULL, expires_at double precision,
    revoked_at double precision
);

CREATE TABLE overrides (
    kind text COLLATE "C" NOT NULL,
    target text COLLATE "C" NOT NULL,
    value jsonb NOT NULL,
    updated_at double precision NOT NULL,
    author text,
    PRIMARY KEY (kind, target)
);
"""),
    Migration(2, "alert history", """
CREATE TABLE alerts (
    id text COLLATE "C" PRIMARY KEY,
    ts double precision NOT NULL,
    kind text NOT NULL, severity text NOT NULL, title text NOT NULL, message text NOT NULL,
    dedupe_key text NOT NULL UNIQUE,
    data jsonb NOT NULL,
    deliveries jsonb NOT NULL DEFAULT '[]'::jsonb
);
CREATE INDEX alerts_ts ON alerts (ts);
"""),
    Migration(3, "hourly usage rollup", _rollup_sql()),
    Migration(4, "audio, 1-hour cache writes, search calls and service tier", """
ALTER TABLE ledger
    ADD COLUMN IF NOT EXISTS input_audio_tokens bigint NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS output_audio_tokens bigint NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS cache_write_1h_tokens bigint NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS web_search_requests bigint NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS file_search_calls bigint NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS service_tier text;
"""),
    Migration(5, "responses created through the gateway", PG_SCHEMA),
    Migration(6, "provisional ledger rows replaced by their request's own", _replacement_sql()),
    Migration(7, "reconciliation runs and recorded prices", """
CREATE TABLE IF NOT EXISTS reconcile_runs (
    id text COLLATE "C" PRIMARY KEY,
    ts double precision NOT NULL,
    provider text COLLATE "C" NOT NULL,
    since double precision NOT NULL,
    until double precision NOT NULL,
    ledger_nano bigint NOT NULL,
    provider_nano bigint NOT NULL,
    drift_nano bigint NOT NULL,
    ledger_tokens bigint NOT NULL,
    provider_tokens bigint NOT NULL,
    drift_tokens bigint NOT NULL,
    alerted boolean NOT NULL DEFAULT false,
    rows jsonb NOT NULL
);
CREATE INDEX IF NOT EXISTS reconcile_runs_ts ON reconcile_runs (provider, ts);
CREATE TABLE IF NOT EXISTS price_records (
    model text COLLATE "C" NOT NULL,
    provider text COLLATE "C" NOT NULL,
    fingerprint text NOT NULL,
    recorded_at double precision NOT NULL,
    PRIMARY KEY (model, provider)
);
"""),
    Migration(8, "the agent run or session of a ledger row", """
ALTER TABLE ledger ADD COLUMN IF NOT EXISTS run_id text;
CREATE INDEX IF NOT EXISTS ledger_run ON ledger (run_id, ts) WHERE run_id IS NOT NULL;
"""),
)

LATEST = MIGRATIONS[-1].version
