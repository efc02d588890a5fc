"""The package's layers only look down: data and the shared network pieces import nothing above them,
models import no evaluation or engine code, and no two layers import each other (every import,
including those inside functions, is read from the source)."""
from __future__ import annotations

import ast
from pathlib import Path

import dgm_cli

ROOT = Path(dgm_cli.__file__).parent
# lower number = lower layer; a module may import its own layer or lower ones
LAYERS = [
    ("dgm_cli.errors", 0), ("dgm_cli.atomic", 0), ("dgm_cli.progress", 0),
    ("dgm_cli.data", 1),
    ("dgm_cli.models.nn", 2),
    ("dgm_cli.models", 3), ("dgm_cli.images", 3),
    ("dgm_cli.evaluation", 4), ("dgm_cli.engine", 4),
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
                # `from . import toy` imports a module; `from .pipeline import x`, a name of one
                found |= {f"{target}.{a.name}" if node.module is None else target for a in node.names}
    return found


def graph() -> dict[str, set[str]]:
    return {module_name(p): imports(p) for p in ROOT.rglob("*.py")}


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
