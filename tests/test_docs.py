"""Docs that tests keep true: every configuration setting and every CLI command is in the
README."""

from __future__ import annotations

from pathlib import Path
from typing import Any, get_args, get_origin

import click
from pydantic import BaseModel

from tokenstile.cli import main
from tokenstile.config import Config

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def _models(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    out: list[type[BaseModel]] = []
    for arg in get_args(annotation):
        out.extend(_models(arg))
    return out


def setting_names(model: type[BaseModel] = Config, seen: frozenset[type] = frozenset()
                  ) -> set[str]:
    names: set[str] = set()
    for name, field in model.model_fields.items():
        names.add(field.alias or name)
        for sub in _models(field.annotation):
            if sub not in seen:
                names |= setting_names(sub, seen | {model})
        if get_origin(field.annotation) is None and field.annotation is not None:
            continue
    return names


def test_every_setting_is_documented() -> None:
    missing = sorted(name for name in setting_names() if f"`{name}" not in README
                     and f".{name}`" not in README and f"{name}:" not in README)
    assert not missing, f"settings missing from README.md: {missing}"


def test_every_command_is_documented() -> None:
    def walk(group: click.Group, prefix: str) -> list[str]:
        out = []
        for name, command in group.commands.items():
            full = f"{prefix} {name}"
            out.append(full)
            if isinstance(command, click.Group):
                out.extend(walk(command, full))
        return out

    missing = [c for c in walk(main, "tokenstile") if c not in README]
    assert not missing, f"commands missing from README.md: {missing}"


def test_serve_options_logs_traces_and_deploy_files_are_documented() -> None:
    from tokenstile.observability.logs import access_fields
    from tokenstile.types import LedgerRow

    serve = main.commands["serve"]
    options = [o for p in serve.params for o in p.opts if o.startswith("--")]
    documented = [*options, "tokenstile --version", "[otel]", "OTEL_TRACES_EXPORTER",
                  "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_SERVICE_NAME", "OTEL_SDK_DISABLED",
                  "`Dockerfile`", "`docker-compose.yml`", "deploy/tokenstile.yaml",
                  ".ci/smoke.py"]
    fields = [f'"{name}":' for name in access_fields(LedgerRow(id="r", ts=0.0))]
    missing = [name for name in documented + fields if name not in README]
    assert not missing, f"missing from README.md: {missing}"


def test_the_first_thing_in_the_readme_is_the_demo_then_the_tests() -> None:
    blocks = [block.split("```", 1)[0].strip() for block in README.split("```bash\n")[1:3]]
    assert blocks == ["pip install -e . && tokenstile demo",
                      "pip install -e '.[test]' && python -m pytest"]
    assert README.index("```bash") < README.index("\n## ")
