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


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


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
)

LATEST = MIGRATIONS[-1].version
