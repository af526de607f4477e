"""No new import circle among winexec's modules.

Every import counts, module-level or inside a function (a function-level import is still a
dependency, only a later one); imports under ``if TYPE_CHECKING:`` do not. None is known.
"""

from __future__ import annotations

import ast
from pathlib import Path

import winexec

PACKAGE = Path(winexec.__file__).parent
KNOWN: list[set[str]] = []


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The winexec modules ``name`` imports: ``from pkg import sub`` counts as ``pkg.sub``."""
    tree = ast.parse(path.read_text())
    typing_only = {  # the body of ``if TYPE_CHECKING:`` only (not its else, not ``if not ...``)
        id(n)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING")
        for stmt in node.body
        for n in ast.walk(stmt)
    }
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    named: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            named.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*up, *([node.module] if node.module else [])])
            named.update(f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names)
    found = set()
    for mod in named:
        while mod and mod not in modules:
            mod = mod.rpartition(".")[0]
        if mod and mod != name:
            found.add(mod)
    return found


def _circles(graph: dict[str, set[str]]) -> list[set[str]]:
    """The strongly connected components with more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                circles.append(component)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return circles


def test_no_new_import_circle() -> None:
    modules = _modules()
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}
    assert len(graph) > 40 and "winexec.agent.spool" in graph["winexec.agent.hostlog"]  # it sees imports
    assert [c for c in _circles(graph) if c not in KNOWN] == []


def test_the_check_finds_a_circle() -> None:
    assert _circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [{"a", "b", "c"}]


def test_the_transport_knows_nothing_of_airflow() -> None:
    """``winexec.transport`` is WS-Man and PSRP only: the Airflow glue stays on its side."""
    modules = _modules()
    for name, path in modules.items():
        if name == "winexec.transport" or name.startswith("winexec.transport."):
            tree = ast.parse(path.read_text())
            named = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
            named += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
            assert [m for m in named if m.split(".")[0] == "airflow"] == [], name
            inside = {m for m in _imports(name, path, modules) if not m.startswith("winexec.transport")}
            assert inside <= {"winexec.config", "winexec.protocol", "winexec.backoff", "winexec.tickets"}, (
                name
            )
