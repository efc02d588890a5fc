"""The package's layers only look down: data and the shared network pieces import nothing above them,
models import no evaluation or engine code, and no two layers import each other; and no module of the
package takes part in an import cycle, however long (every import, including those inside functions,
is read from the source)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import dgm_cli
from dgm_cli.commands import COMMANDS

ROOT = Path(dgm_cli.__file__).parent
# lower number = lower layer; a module may import its own layer or lower ones
LAYERS = [
    ("dgm_cli.errors", 0),
    ("dgm_cli.atomic", 0),
    ("dgm_cli.progress", 0),
    ("dgm_cli.images", 0),  # pictures of tensors: the caller says what the data is (a piano roll or not)
    ("dgm_cli.rules", 0),  # a key's rule, declared beside it in a schema (the trainer's lives in engine/)
    ("dgm_cli.data", 1),
    ("dgm_cli.models.nn", 2),
    ("dgm_cli.models", 3),
    ("dgm_cli.evaluation", 4),
    ("dgm_cli.engine", 4),
    ("dgm_cli", 5),  # the command line: cli, app, commands/ (train, sample, evaluate, report), settings/
]


def layer(module: str) -> tuple[str, int]:
    for prefix, rank in LAYERS:
        if module == prefix or module.startswith(prefix + "."):
            return prefix, rank
    raise AssertionError(module)


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("dgm_cli")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("dgm_cli"):
                # `from . import toy` and `from dgm_cli.data import toy` import a module; `from .pipeline
                # import x`, a name of one
                found |= {f"{target}.{a.name}" if f"{target}.{a.name}" in MODULES else target for a in node.names}
    return found - {name}


MODULES = {module_name(p) for p in ROOT.rglob("*.py")}


def graph() -> dict[str, set[str]]:
    edges = {module_name(p): imports(p) for p in ROOT.rglob("*.py")}
    # the dispatcher imports each command's module by the name the command table gives
    edges["dgm_cli.cli"] |= {module for module, _ in COMMANDS.values()}
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan 1972), each as one cycle
    through some of its modules, found by a walk from its first module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set(stack[stack.index(v) :])
            del stack[stack.index(v) :]
            if len(component) > 1:
                found.append(_one_cycle(edges, component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def _one_cycle(edges: dict[str, set[str]], component: set[str]) -> list[str]:
    """A shortest path back to the component's first module: breadth first, within the component."""
    start = min(component)
    paths = {start: [start]}
    queue = [start]
    for v in queue:
        for w in sorted(edges.get(v, set()) & component):
            if w == start:
                return paths[v] + [start]
            if w not in paths:
                paths[w] = paths[v] + [w]
                queue.append(w)
    raise AssertionError(component)


def test_imports_only_look_down():
    wrong = []
    for module, targets in graph().items():
        if module.startswith("dgm_cli.configs"):
            continue
        _, rank = layer(module)
        for target in targets:
            if layer(target)[1] > rank:
                wrong.append(f"{module} imports {target}")
    assert not wrong, "imports against the layers:\n" + "\n".join(sorted(wrong))


def test_no_import_cycle_between_layers():
    edges = {}
    for module, targets in graph().items():
        a = layer(module)[0]
        for target in targets:
            b = layer(target)[0]
            if a != b:
                edges.setdefault(a, set()).add(b)
    cycles = [f"{a} <-> {b}" for a, outs in edges.items() for b in outs if a in edges.get(b, set())]
    assert not cycles, cycles


def test_no_import_cycle_between_modules():
    """No module imports, however indirectly, a module that imports it: not at the top and not inside a
    function (an import put off into a function only moves the circle to run time)."""
    found = [" -> ".join(c) for c in cycles(graph())]
    assert not found, "import cycles:\n" + "\n".join(found)


def test_cycles_finds_a_circle_and_only_a_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert cycles({"a": {"b", "c"}, "b": {"c"}, "c": set()}) == []


def test_no_module_reaches_another_through_sys_modules():
    """``sys.modules[...]`` of one of the package's own modules is an import the graph above cannot see."""
    found = [
        f"{p.relative_to(ROOT.parent)}:{n}"
        for p in ROOT.rglob("*.py")
        for n, line in enumerate(p.read_text().splitlines(), 1)
        if re.search(r"sys\.modules(\.get\(|\[)\s*f?[\"'](\{__package__\}|\{__name__\}|dgm_cli)", line)
    ]
    assert not found, found


def test_each_family_is_a_folder_of_models_and_the_interface_names_every_one():
    """The architecture shows in the tree: a model's `family` is the folder its module lives in, and the
    interface's comment lists every family there is."""
    from dgm_cli.models.registry import MODELS, get_model_class

    get_model_class("vae")  # loads the registry
    families = {cls.family for cls in MODELS.values()}
    assert all(cls.__module__.split(".")[2] == cls.family for cls in MODELS.values())
    comment = (ROOT / "models" / "base.py").read_text().split("family: ClassVar")[0].rsplit("#: family name", 1)[1]
    assert families == set(re.findall(r'"(\w+)"', comment)), "models/base.py's list of families is out of date"
