"""The library's shape, read from its source with ``ast`` (nothing is imported or run):

* no import circle between the modules of the library packages: every ``import`` and
  ``from ... import`` counts, at module level, inside functions and under ``TYPE_CHECKING``
  (a circle is a design circle even where Python happens to survive it);
* no access to another module's private members: ``x._name`` (or ``getattr/setattr/hasattr(x,
  "_name")``) is allowed on ``self``, ``cls`` and ``super()``, and on anything else only when
  ``_name`` belongs to the same module (a class or a module-level name defined there), since
  Python's privacy is the module's. ``ALLOWED`` lists the deliberate exceptions, with reasons.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("topology", "mixing", "gossip", "node", "sim")
SCRIPTS = ("scripts",)

# (file, expression) -> why a private name of another module is used there on purpose.
ALLOWED: dict[tuple[str, str], str] = {
    ("node/zygote.py", "os._exit"): "a forked child must exit without running the parent's "
                                    "atexit handlers and flushing its inherited buffers",
    ("node/learning/files.py", "multiarray._reconstruct"): "the restricted unpickler maps the "
        "globals numpy pickles arrays with to numpy's own functions of those names",
    ("node/learning/files.py", "numeric._frombuffer"): "the restricted unpickler: numpy pickles "
        "arrays with protocol 5 through this global",
}
# Underscored names that are public API: namedtuple's methods and fields.
PUBLIC_UNDERSCORED = frozenset({"_asdict", "_replace", "_fields", "_make", "_field_defaults"})


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def library_files() -> dict[str, Path]:
    """Module name -> file, for every module of the library packages."""
    return {module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def imported_modules(name: str, path: Path, modules: set[str]) -> Iterator[tuple[str, int]]:
    """(library module, line) for each import in ``path`` (module ``name``); ``from pkg import
    x`` imports the submodule ``pkg.x`` when there is one, else ``pkg`` itself."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(parse(path)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                target = longest_module(alias.name, modules)
                if target:
                    yield target, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                target = longest_module(f"{base}.{alias.name}", modules) or \
                    longest_module(base, modules)
                if target:
                    yield target, node.lineno


def longest_module(dotted: str, modules: set[str]) -> str | None:
    parts = dotted.split(".")
    for end in range(len(parts), 0, -1):
        if ".".join(parts[:end]) in modules:
            return ".".join(parts[:end])
    return None


def import_graph() -> dict[str, dict[str, int]]:
    """module -> {imported library module: first line importing it}."""
    files = library_files()
    graph: dict[str, dict[str, int]] = {}
    for name, path in files.items():
        edges: dict[str, int] = {}
        for target, line in imported_modules(name, path, set(files)):
            if target != name:
                edges.setdefault(target, line)
        graph[name] = edges
    return graph


def strongly_connected(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Tarjan's components of more than one module, each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def one_cycle(graph: dict[str, dict[str, int]], component: list[str]) -> list[str]:
    """A shortest circle through the component's first module (breadth first, inside it)."""
    start, members = component[0], set(component)
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for v in frontier:
            for w in sorted(graph[v]):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return [*reversed(path), start]
                if w in members and w not in previous:
                    previous[w] = v
                    following.append(w)
        frontier = following
    raise AssertionError(f"no circle in {component}")


def describe_cycle(graph: dict[str, dict[str, int]], cycle: list[str]) -> str:
    files = library_files()
    steps = [f"{files[a].relative_to(ROOT)}:{graph[a][b]} imports {b}"
             for a, b in zip(cycle, cycle[1:])]
    return " -> ".join(cycle) + "\n    " + "\n    ".join(steps)


def test_no_import_circle_between_library_modules():
    graph = import_graph()
    circles = [describe_cycle(graph, one_cycle(graph, c)) for c in strongly_connected(graph)]
    assert not circles, "import circles:\n  " + "\n  ".join(circles)


# -- private members ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Access:
    line: int
    expression: str
    name: str
    owner: ast.expr


def is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__")) \
        and name not in PUBLIC_UNDERSCORED


def private_accesses(tree: ast.Module) -> Iterator[Access]:
    """Every ``x._name`` and ``getattr/setattr/hasattr/delattr(x, "_name")`` in the module."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and is_private(node.attr):
            yield Access(node.lineno, ast.unparse(node), node.attr, node.value)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and \
                node.func.id in ("getattr", "setattr", "hasattr", "delattr") and \
                len(node.args) >= 2 and isinstance(node.args[1], ast.Constant) and \
                isinstance(node.args[1].value, str) and is_private(node.args[1].value):
            yield Access(node.lineno, ast.unparse(node), node.args[1].value, node.args[0])


def own_names(tree: ast.Module) -> set[str]:
    """Private names the module defines: its module-level names, its classes' names (methods,
    class attributes, dataclass fields, __slots__) and the attributes they use on self/cls."""
    names: set[str] = set()
    for body in [tree.body] + [c.body for c in ast.walk(tree) if isinstance(c, ast.ClassDef)]:
        for statement in body:
            names |= defined_by(statement)
    names |= {n.attr for n in ast.walk(tree)
              if isinstance(n, ast.Attribute) and is_own_object(n.value)}
    return {n for n in names if is_private(n)}


def defined_by(statement: ast.stmt) -> set[str]:
    """The names one module-level or class-body statement binds."""
    if isinstance(statement, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return {statement.name}
    if isinstance(statement, (ast.Import, ast.ImportFrom)):
        return {(a.asname or a.name).split(".")[0] for a in statement.names}
    targets = statement.targets if isinstance(statement, ast.Assign) else \
        [statement.target] if isinstance(statement, (ast.AnnAssign, ast.AugAssign)) else []
    names = {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}
    if "__slots__" in names and isinstance(statement, ast.Assign):
        names |= {c.value for c in ast.walk(statement.value)
                  if isinstance(c, ast.Constant) and isinstance(c.value, str)}
    return names


def is_own_object(owner: ast.expr) -> bool:
    if isinstance(owner, ast.Name):
        return owner.id in ("self", "cls")
    return isinstance(owner, ast.Call) and isinstance(owner.func, ast.Name) and \
        owner.func.id == "super"


def checked_files() -> list[Path]:
    return [p for folder in (*PACKAGES, *SCRIPTS) for p in sorted((ROOT / folder).rglob("*.py"))]


def violations(path: Path) -> list[str]:
    tree = parse(path)
    mine = own_names(tree)
    where = str(path.relative_to(ROOT))
    return [f"{where}:{a.line}: {a.expression}"
            for a in sorted(private_accesses(tree), key=lambda a: a.line)
            if not is_own_object(a.owner) and a.name not in mine
            and (where, ast.unparse(a.owner) + "." + a.name) not in ALLOWED]


def test_no_access_to_another_modules_private_members():
    found = [v for path in checked_files() for v in violations(path)]
    assert not found, "private members used from another module:\n  " + "\n  ".join(found)


def test_the_allow_list_names_only_accesses_that_exist():
    """An entry whose access was removed is dead: drop it with the code."""
    present = {(str(p.relative_to(ROOT)), ast.unparse(a.owner) + "." + a.name)
               for p in checked_files() for a in private_accesses(parse(p))}
    assert set(ALLOWED) <= present, set(ALLOWED) - present


@pytest.mark.parametrize("source, expected", [
    ("class A:\n    def f(self, other):\n        return self._x + other._x\n"
     "    def __init__(self):\n        self._x = 1\n", []),
    ("import other\ndef f(peer):\n    return peer._inbox\n", ["peer._inbox"]),
    ("def f(peer):\n    return getattr(peer, '_state', None)\n",
     ["getattr(peer, '_state', None)"]),
    ("def f(p):\n    return p._replace(a=1), p.__dict__, super()._x\n", []),
])
def test_the_private_check_sees_what_it_should(source, expected):
    tree = ast.parse(source)
    mine = own_names(tree)
    found = [a.expression for a in private_accesses(tree)
             if not is_own_object(a.owner) and a.name not in mine]
    assert found == expected


def test_the_import_walk_resolves_relative_and_submodule_imports(tmp_path):
    modules = {"pkg", "pkg.a", "pkg.b", "pkg.sub", "pkg.sub.c"}
    path = tmp_path / "pkg" / "sub" / "c.py"
    path.parent.mkdir(parents=True)
    path.write_text("from .. import a\nfrom ..b import thing\nimport pkg.sub\n"
                    "def f():\n    from pkg import b\n    import torch\n")
    found = list(imported_modules("pkg.sub.c", path, modules))
    assert found == [("pkg.a", 1), ("pkg.b", 2), ("pkg.sub", 3), ("pkg.b", 5)]
    graph = {"a": {"b": 1}, "b": {"c": 2}, "c": {"a": 3}, "d": {"a": 1}}
    assert strongly_connected(graph) == [["a", "b", "c"]]
    assert one_cycle(graph, ["a", "b", "c"]) == ["a", "b", "c", "a"]
