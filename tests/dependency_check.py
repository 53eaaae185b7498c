"""Does every import in the package come from something a fresh install provides?

A module may import, at its top level: the standard library, the package itself, and any
distribution that the ``[project] dependencies`` bring in (with their extras and their own
requirements, transitively: ``uvloop`` comes with ``uvicorn[standard]``). A distribution of
an optional extra other than ``test`` (e.g. ``[otel]``) may be imported only where a
missing one cannot break the import of the module: inside a function, under
``TYPE_CHECKING``, or in a ``try`` that catches ``ImportError``. Test-only packages (the
``test`` extra) may not be imported anywhere in the package, including
``tokenstile/testing/``: that subpackage ships and ``tokenstile demo`` runs it.

Which distribution provides a module is read from the installed distributions' metadata,
so the check runs in an environment where the extras are installed (the test one).
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cache
from importlib.metadata import PackageNotFoundError, distribution, packages_distributions
from pathlib import Path

from packaging.requirements import Requirement

TEST_EXTRA = "test"


@dataclass(frozen=True)
class Import:
    path: Path
    line: int
    module: str
    lazy: bool  # in a function, under TYPE_CHECKING, or guarded by except ImportError

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.module}"


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _catches_import_error(node: ast.Try) -> bool:
    for handler in node.handlers:
        caught = handler.type
        names = caught.elts if isinstance(caught, ast.Tuple) else [caught]
        if caught is None or any(isinstance(n, ast.Name) and n.id in (
                "ImportError", "ModuleNotFoundError", "Exception", "BaseException")
                for n in names):
            return True
    return False


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports_of(path: Path, source: str | None = None) -> Iterator[Import]:
    """Absolute imports of one module, each marked lazy or not."""
    tree = ast.parse(source if source is not None else path.read_text(), str(path))

    def walk(nodes: Iterable[ast.AST], lazy: bool) -> Iterator[Import]:
        for node in nodes:
            if isinstance(node, ast.Import):
                for alias in node.names:
                    yield Import(path, node.lineno, alias.name, lazy)
            elif isinstance(node, ast.ImportFrom):
                if node.level == 0 and node.module:
                    yield Import(path, node.lineno, node.module, lazy)
            elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                yield from walk(ast.iter_child_nodes(node), True)
            elif isinstance(node, ast.If) and _is_type_checking(node.test):
                yield from walk(node.body, True)
                yield from walk(node.orelse, lazy)
            elif isinstance(node, ast.Try) and _catches_import_error(node):
                yield from walk(node.body, True)
                yield from walk([*node.handlers, *node.orelse, *node.finalbody], lazy)
            else:
                yield from walk(ast.iter_child_nodes(node), lazy)

    yield from walk(tree.body, False)


@cache
def _requires(dist_name: str) -> tuple[str, ...]:
    try:
        return tuple(distribution(dist_name).requires or ())
    except PackageNotFoundError:
        return ()


def closure(requirements: Iterable[str]) -> set[str]:
    """Canonical names of the distributions these requirements install, transitively,
    on this platform (markers evaluated here; extras followed)."""
    seen: set[tuple[str, str]] = set()
    found: set[str] = set()
    todo = [(Requirement(text), "") for text in requirements]
    while todo:
        req, extra = todo.pop()
        if req.marker is not None and not req.marker.evaluate({"extra": extra}):
            continue
        name = canonical(req.name)
        found.add(name)
        for wanted in ("", *sorted(req.extras)):
            if (name, wanted) in seen:
                continue
            seen.add((name, wanted))
            todo.extend((Requirement(text), wanted) for text in _requires(name))
    return found


@cache
def _module_providers() -> dict[str, tuple[str, ...]]:
    return {module: tuple(canonical(d) for d in dists)
            for module, dists in packages_distributions().items()}


@cache
def _dist_paths(dist_name: str) -> frozenset[str]:
    try:
        files = distribution(dist_name).files or []
    except PackageNotFoundError:
        return frozenset()
    return frozenset(str(f.parent) for f in files) | frozenset(
        str(f).removesuffix(".py") for f in files)


def providers(module: str) -> set[str]:
    """Distributions that provide ``module``; for a namespace package shared by several
    (``opentelemetry``), those that hold the submodule itself."""
    parts = module.split(".")
    dists = _module_providers().get(parts[0], ())
    if len(dists) <= 1 or len(parts) == 1:
        return set(dists)
    for depth in range(len(parts), 1, -1):
        prefix = "/".join(parts[:depth])
        holding = {d for d in dists if any(p == prefix or p.startswith(prefix + "/")
                                           for p in _dist_paths(d))}
        if holding:
            return holding
    return set(dists)


@dataclass(frozen=True)
class Project:
    name: str
    dependencies: tuple[str, ...]
    extras: dict[str, tuple[str, ...]]

    @classmethod
    def read(cls, pyproject: Path) -> Project:
        data = tomllib.loads(pyproject.read_text())["project"]
        return cls(data["name"], tuple(data.get("dependencies", ())),
                   {k: tuple(v) for k, v in data.get("optional-dependencies", {}).items()})


def undeclared_imports(package_dir: Path, project: Project) -> list[str]:
    """One line per import that a plain ``pip install`` of the project would not satisfy."""
    first_party = package_dir.name
    runtime = closure(project.dependencies)
    optional = closure(req for extra, reqs in project.extras.items() if extra != TEST_EXTRA
                       for req in reqs) - runtime
    stdlib = sys.stdlib_module_names
    problems = []
    for path in sorted(package_dir.rglob("*.py")):
        for imp in imports_of(path):
            top = imp.module.split(".")[0]
            if top in stdlib or top == first_party or top == "__future__":
                continue
            found = providers(imp.module)
            if found & runtime:
                continue
            if found & optional:
                if not imp.lazy:
                    extra = ", ".join(sorted(found & optional))
                    problems.append(f"{imp}: from an optional extra ({extra}) but imported "
                                    "at module level, unguarded")
                continue
            where = ", ".join(sorted(found)) or "no installed distribution"
            problems.append(f"{imp}: provided by {where}, which no runtime dependency "
                            "brings in")
    return problems
