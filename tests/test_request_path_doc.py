"""docs/request-path.md stays true: its modules and entry points exist, the pipeline calls
the stages in the order the page gives, and every module of ``gateway/`` is on the page."""

from __future__ import annotations

import importlib
import inspect
import re
from pathlib import Path

from tokenstile.gateway.pipeline import Gateway

ROOT = Path(__file__).resolve().parent.parent
PAGE = (ROOT / "docs" / "request-path.md").read_text()
ROW = re.compile(r"^\| (\d+) \| (\w+) \| `([\w/]+)\.py` \| `([\w.]+)` \|", re.M)
ROWS = ROW.findall(PAGE)


def test_every_stage_names_a_real_module_and_entry_point() -> None:
    assert len(ROWS) >= 10
    for _, stage, path, entry in ROWS:
        module = importlib.import_module(path.replace("/", "."))
        owner: object = module
        for part in entry.split("."):
            assert hasattr(owner, part), f"stage {stage}: {path}.py has no {entry}"
            owner = getattr(owner, part)


def test_the_pipeline_calls_the_stages_in_the_pages_order() -> None:
    # handle's source with serve's in place of its call, and admit's in place of its own
    serve = inspect.getsource(Gateway.serve).replace(
        "self.admit(", inspect.getsource(Gateway.admit), 1)
    source = inspect.getsource(Gateway.handle).replace("self.serve(", serve, 1)
    calls = [entry.split(".")[-1] for _, _, path, entry in ROWS
             if not path.endswith("app")]
    positions = []
    for name in calls:
        found = re.search(rf"\.{name}\(", source)
        assert found is not None, f"the pipeline does not call {name}"
        positions.append(found.start())
    assert positions == sorted(positions), "the page's order is not the pipeline's"


def test_every_gateway_module_is_on_the_page() -> None:
    for path in sorted((ROOT / "src" / "tokenstile" / "gateway").glob("*.py")):
        if path.name == "__init__.py":
            continue
        assert f"gateway/{path.name}" in PAGE, f"docs/request-path.md misses {path.name}"


def test_the_pipeline_stays_short() -> None:
    lines = (ROOT / "src" / "tokenstile" / "gateway" / "pipeline.py").read_text().count("\n")
    assert lines < 300
