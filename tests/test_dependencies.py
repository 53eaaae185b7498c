"""A plain ``pip install tokenstile`` provides every module the package imports.

(``.ci/smoke`` also imports every module in a new virtual environment without extras; this
check names the offending line and runs with the rest of the suite.)
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

from tests.dependency_check import Project, closure, imports_of, undeclared_imports

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "src" / "tokenstile"
PROJECT = Project.read(ROOT / "pyproject.toml")


def test_every_import_of_the_package_is_a_declared_runtime_dependency() -> None:
    assert undeclared_imports(PACKAGE, PROJECT) == []


def test_the_check_catches_prometheus_client_dropped_from_the_dependencies() -> None:
    without = replace(PROJECT, dependencies=tuple(
        d for d in PROJECT.dependencies if not d.startswith("prometheus-client")))
    assert len(without.dependencies) == len(PROJECT.dependencies) - 1
    problems = undeclared_imports(PACKAGE, without)
    assert problems, "dropping prometheus-client went unnoticed"
    assert all("prometheus_client" in p for p in problems)
    assert any(re.search(r"tokenstile/metrics\.py:\d+: prometheus_client: provided by "
                         r"prometheus-client", p) for p in problems), problems


def write_package(root: Path, files: dict[str, str]) -> Path:
    package = root / "pkg"
    package.mkdir()
    for name, text in files.items():
        (package / name).write_text(text)
    return package


def test_the_check_on_a_synthetic_package(tmp_path: Path) -> None:
    package = write_package(tmp_path, {
        "__init__.py": "import os\nfrom pkg import helpers\n",
        "metrics.py": "from prometheus_client import Counter\n",
        "speed.py": "import uvloop\nimport yaml\n",
        "traces.py": (
            "from typing import TYPE_CHECKING\n"
            "if TYPE_CHECKING:\n    from opentelemetry.trace import Tracer\n"
            "try:\n    from opentelemetry.sdk.trace import TracerProvider\n"
            "except ImportError:\n    TracerProvider = None\n"
            "def export():\n    from opentelemetry.exporter.otlp.proto.http import x\n"),
        "eager.py": "from opentelemetry.sdk.trace import TracerProvider\n",
        "testing.py": "def helper():\n    import pytest\n",
    })
    project = Project("pkg", ("uvicorn[standard]>=0.30", "PyYAML"),
                      {"otel": ("opentelemetry-sdk", "opentelemetry-exporter-otlp-proto-http"),
                       "test": ("pytest",)})
    problems = [p.replace(str(package) + "/", "") for p in undeclared_imports(package, project)]
    assert problems == [
        "eager.py:1: opentelemetry.sdk.trace: from an optional extra (opentelemetry-sdk) "
        "but imported at module level, unguarded",
        "metrics.py:1: prometheus_client: provided by prometheus-client, which no runtime "
        "dependency brings in",
        "testing.py:2: pytest: provided by pytest, which no runtime dependency brings in",
    ]
    fixed = replace(project, dependencies=(*project.dependencies, "prometheus-client"))
    assert len(undeclared_imports(package, fixed)) == 2


def test_requirements_are_followed_with_their_extras_and_markers() -> None:
    with_standard = closure(["uvicorn[standard]"])
    assert {"uvicorn", "uvloop", "httptools", "click"} <= with_standard
    assert "uvloop" not in closure(["uvicorn"])
    assert "hiredis" in closure(["redis[hiredis]"]) and "hiredis" not in closure(["redis"])


def test_lazy_imports_are_told_from_module_level_ones(tmp_path: Path) -> None:
    source = ("import a\n"
              "def f():\n    import b\n"
              "class C:\n    import c\n"
              "try:\n    import d\nexcept (ValueError, ImportError):\n    import e\n"
              "try:\n    import g\nexcept KeyError:\n    pass\n")
    found = {i.module: i.lazy for i in imports_of(tmp_path / "m.py", source)}
    assert found == {"a": False, "b": True, "c": False, "d": True, "e": False, "g": False}
