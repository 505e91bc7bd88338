"""The house rules, read from the source: each floor imports only the floors below it, no module imports itself
back through others, and every package folder is one the distribution installs.

docs/ARCHITECTURE.md draws the floors; this test is what keeps the drawing true.
"""

from __future__ import annotations

import ast
import importlib
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Floor of each part of `iotsettle.oracle` and of `iotsettle.cli`; a module may import its own floor's part and the
# parts on lower floors. `daemon` and `ops` share a floor and may not import each other, nor may `demo` and `testing`.
FLOORS = {
    "protocol": 0,
    "config": 1,
    "chain": 2,
    "device": 3,
    "daemon": 4,
    "ops": 4,
    "credit": 5,
    "demo": 6,
    "testing": 6,
    "cli": 7,
}


def _modules() -> dict[str, Path]:
    found = {}
    for top in ("oracle", "cli"):
        for path in sorted((REPO / top).rglob("*.py")):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found["iotsettle." + ".".join(parts)] = path
    return found


MODULES = _modules()


def _part(module: str) -> str:
    """`iotsettle.oracle.daemon.store` → `daemon`; `iotsettle.oracle.config` → `config`; `iotsettle.cli.x` → `cli`."""
    parts = module.split(".")
    if parts[1] == "cli":
        return "cli"
    return parts[2] if len(parts) > 2 else "oracle"


def _imports(module: str, path: Path) -> list[tuple[str, int, bool]]:
    """(imported iotsettle module, line, inside a function) for every import of this project in the file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found: list[tuple[str, int, bool]] = []

    def visit(node: ast.AST, nested: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = nested or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, ast.Import):
                found.extend((a.name, child.lineno, nested) for a in child.names if a.name.startswith("iotsettle."))
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    base = ".".join(
                        package.split(".")[: len(package.split(".")) - child.level + 1] + ([base] if base else [])
                    )
                if not base.startswith("iotsettle."):
                    continue
                for alias in child.names:
                    sub = f"{base}.{alias.name}"
                    found.append((sub if sub in MODULES else base, child.lineno, nested))
            elif isinstance(child, ast.If) and _is_type_checking(child):
                # The `if TYPE_CHECKING:` branch is read by the type checker only; its `else:` runs.
                for statement in child.orelse:
                    visit(ast.Module(body=[statement], type_ignores=[]), nested)
            else:
                if (target := _lazy_target(child)) is not None and target.startswith("iotsettle."):
                    found.append((target, child.lineno, nested))
                visit(child, inner)

    visit(tree, False)
    return found


def _is_type_checking(node: ast.If) -> bool:
    return isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"


def _lazy_target(node: ast.AST) -> str | None:
    """The module of a ``lazy_import("module")`` call (cli/_lazy.py), which counts as an import of it."""
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == "lazy_import"
        and len(node.args) == 1
        and isinstance(node.args[0], ast.Constant)
        and isinstance(node.args[0].value, str)
    ):
        return node.args[0].value
    return None


def test_every_part_has_a_floor() -> None:
    parts = {_part(m) for m in MODULES} - {"oracle"}
    assert parts <= set(FLOORS), f"parts without a floor in FLOORS: {sorted(parts - set(FLOORS))}"


def test_imports_run_down_the_floors() -> None:
    against = []
    for module, path in MODULES.items():
        here = _part(module)
        for imported, line, _ in _imports(module, path):
            there = _part(imported)
            if there == here or here == "oracle":
                continue
            if there == "oracle" or FLOORS[there] >= FLOORS[here]:
                against.append(f"{path.relative_to(REPO)}:{line} ({here}) imports {imported} ({there})")
    assert not against, "imports against the floors:\n" + "\n".join(against)


def test_no_import_inside_a_function() -> None:
    """Imports inside functions hide cycles and the real dependencies of a module; this project has none."""
    nested = [
        f"{path.relative_to(REPO)}:{line} imports {imported}"
        for module, path in MODULES.items()
        for imported, line, inside in _imports(module, path)
        if inside
    ]
    assert not nested, "imports inside functions:\n" + "\n".join(nested)


def _deferred_bindings(tree: ast.Module) -> tuple[dict[str, str], dict[str, str], list[int]]:
    """Of a module's top-level ``if TYPE_CHECKING: … else: …``: the names its first branch imports (name → module),
    the names its ``else`` binds with ``lazy_import`` (name → module), and the lines of ``lazy_import`` calls found
    anywhere else."""
    typed: dict[str, str] = {}
    lazy: dict[str, str] = {}
    placed: set[int] = set()
    for node in tree.body:
        if not (isinstance(node, ast.If) and _is_type_checking(node)):
            continue
        for statement in node.body:
            if isinstance(statement, ast.ImportFrom):
                for alias in statement.names:
                    typed[alias.asname or alias.name] = f"{statement.module}.{alias.name}"
            elif isinstance(statement, ast.Import):
                for alias in statement.names:
                    typed[alias.asname or alias.name] = alias.name
        for statement in node.orelse:
            if (
                isinstance(statement, ast.Assign)
                and len(statement.targets) == 1
                and isinstance(statement.targets[0], ast.Name)
                and (target := _lazy_target(statement.value)) is not None
            ):
                lazy[statement.targets[0].id] = target
                placed.add(statement.value.lineno)
    stray = [n.lineno for n in ast.walk(tree) if _lazy_target(n) is not None and n.lineno not in placed]
    return typed, lazy, stray


def test_deferred_imports_follow_the_cli_rule() -> None:
    """cli/_lazy.py: a CLI module defers a heavy module with ``name = lazy_import("module")`` in the ``else`` of its
    top-level ``if TYPE_CHECKING:``, whose first branch imports the same module as the same name; nowhere else, and
    never in oracle/ (the daemon and the operations pay their imports once, at start)."""
    wrong = []
    for module, path in MODULES.items():
        typed, lazy, stray = _deferred_bindings(ast.parse(path.read_text(), filename=str(path)))
        where = path.relative_to(REPO)
        if _part(module) != "cli" and (lazy or stray):
            wrong.append(f"{where}: lazy_import outside cli/")
        wrong += [
            f"{where}:{line}: lazy_import outside the else of the top-level `if TYPE_CHECKING:`" for line in stray
        ]
        for name, target in lazy.items():
            if typed.get(name) != target:
                wrong.append(f"{where}: {name} = lazy_import({target!r}) but TYPE_CHECKING imports {typed.get(name)}")
    assert not wrong, "deferred imports against the rule:\n" + "\n".join(wrong)


def test_no_import_cycle() -> None:
    graph = {m: {i for i, _, _ in _imports(m, p) if i in MODULES and i != m} for m, p in MODULES.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def walk(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (cycle := walk(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for module in sorted(graph):
        if module not in state and (cycle := walk(module)):
            pytest.fail("import cycle: " + " → ".join(cycle))


def test_the_distribution_lists_every_package() -> None:
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    folders = {m for m, p in MODULES.items() if p.name == "__init__.py"}
    assert listed == folders, f"missing: {sorted(folders - listed)}; stale: {sorted(listed - folders)}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_every_module_imports(module: str) -> None:
    """A name imported from a module that no longer has it fails here, not in the one command that loads it
    lazily."""
    importlib.import_module(module)
