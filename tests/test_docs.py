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
