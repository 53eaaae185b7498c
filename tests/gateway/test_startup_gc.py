"""A served worker keeps what its startup left alive out of the garbage collector's walks,
and collects its youngest generation less often.

Without it, a full collection under load walked the ~90,000 objects of startup (modules,
configuration, the price table): a pause of the event loop of about 60 ms every second or
so at full load; and the youngest generation was collected ~150 times a second.
"""

from __future__ import annotations

import asyncio
import gc
from pathlib import Path

import pytest
import yaml

from tokenstile.app import create_app, create_app_from_env
from tokenstile.config import load_config
from tokenstile.gateway.runtime import YOUNG_COLLECTION_THRESHOLD, warm_up_in_thread


def _config(tmp_path: Path) -> Path:
    path = tmp_path / "tokenstile.yaml"
    path.write_text(yaml.safe_dump({"storage": {
        "counters": f"sqlite:///{tmp_path / 'counters.db'}",
        "database": f"sqlite:///{tmp_path / 'ledger.db'}"}}))
    return path


def test_only_a_served_worker_freezes_its_startup(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    path = _config(tmp_path)
    monkeypatch.setenv("TOKENSTILE_CONFIG", str(path))
    assert create_app_from_env().runtime.tune_gc
    # an app built in process (tests, embedding) leaves the collector as it found it
    assert not create_app(load_config(path)).runtime.tune_gc


def test_the_warm_up_of_a_served_worker_freezes_what_is_alive() -> None:
    # (The test session froze its own startup already, as a served worker now does: what
    # this test freezes on top stays frozen, like that.)
    thresholds = gc.get_threshold()
    asyncio.run(warm_up_in_thread(tune_gc=False))
    before = gc.get_freeze_count()
    gc.collect()
    assert gc.get_freeze_count() == before
    assert gc.get_threshold() == thresholds
    alive = [[n] for n in range(10_000)]  # objects a full collection walks
    try:
        asyncio.run(warm_up_in_thread(tune_gc=True))
        assert gc.get_freeze_count() >= before + len(alive)
        walked = len(gc.get_objects())  # what a full collection walks now
        assert walked < len(alive)
        assert gc.get_threshold() == (YOUNG_COLLECTION_THRESHOLD, *thresholds[1:])
    finally:
        gc.set_threshold(*thresholds)
