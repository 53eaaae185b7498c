"""Helpers for the access-log and trace tests: secrets to look for, and a served gateway."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from tests.chaos.procs import GatewayProcess, free_port, write_config
from tests.conftest import UPSTREAM_KEY, FakeHandle
from tokenstile.stores.database import (
    KeyRecord,
    database_from_url,
    hash_key,
    new_key_id,
    new_key_secret,
)


def secret_pieces(*secrets: str) -> list[str]:
    """Each secret, and every 12-character run of it past the prefix shown in listings."""
    pieces = []
    for secret in secrets:
        pieces.append(secret)
        rest = secret[7:]
        pieces += [rest[i:i + 12] for i in range(0, max(1, len(rest) - 11))]
    return pieces


def leaked(text: str, *secrets: str) -> list[str]:
    return [piece for piece in secret_pieces(UPSTREAM_KEY, *secrets) if piece in text]


def create_key(database: str, **fields: Any) -> str:
    async def make() -> str:
        db = database_from_url(database)
        await db.open()
        try:
            secret = new_key_secret()
            await db.create_key(KeyRecord(id=new_key_id(), hash=hash_key(secret),
                                          prefix=secret[:7], created_at=time.time(),
                                          **{"project": "obs", "user": "olga", **fields}))
            return secret
        finally:
            await db.close()

    return asyncio.run(make())


def served_gateway(directory: Path, fake: FakeHandle, args: tuple[str, ...] = (),
                   env: dict[str, str] | None = None) -> tuple[GatewayProcess, str]:
    """A ``tokenstile serve`` process on the fake upstream, and a key for it."""
    database = f"sqlite:///{directory / 'ledger.db'}"
    config = {
        "upstreams": {"openai": {"kind": "openai", "base_url": fake.v1,
                                 "api_key": UPSTREAM_KEY}},
        "storage": {"database": database, "counters": database},
    }
    key = create_key(database)
    path = write_config(directory / "gateway.yaml", config)
    proc = GatewayProcess(path, free_port(), directory / "gateway.log", env=env, args=args)
    proc.start()
    return proc, key
