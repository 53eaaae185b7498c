"""A worker opens its stores before it begins to load its tokenizer and price table.

The warm-up runs in a thread and holds the GIL for most of a few hundred milliseconds; the
start's own steps (opening the database and the counters, recovering reservations, reading
overrides and key limits), begun beside it, each waited for the GIL behind it: a worker
answered its first ``/healthz`` 0.3–0.4 s later than it does now, and its first chat no
sooner.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tokenstile.app import create_app
from tokenstile.config import load_config
from tokenstile.gateway import runtime as runtime_module


async def test_the_warm_up_begins_once_the_start_is_done(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "tokenstile.yaml"
    path.write_text(yaml.safe_dump({"storage": {
        "counters": f"sqlite:///{tmp_path / 'counters.db'}",
        "database": f"sqlite:///{tmp_path / 'ledger.db'}"}}))
    rt = create_app(load_config(path)).runtime
    seen: list[tuple[bool, bool]] = []

    async def warm_up(tune_gc: bool) -> None:
        seen.append((rt.key_limits is not None, rt.started))

    monkeypatch.setattr(runtime_module, "warm_up_in_thread", warm_up)
    await rt.start()
    try:
        for task in rt._tasks:
            if task.get_name() == "tokenstile-warm-up":
                await task
        assert seen == [(True, True)]
    finally:
        await rt.stop()
