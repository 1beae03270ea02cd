"""The package's shape, checked on the source itself (every module's AST, no imports executed):

- imports only point down the layers written in docs/architecture.md, and no import cycle exists between
  packages or between modules;
- library code outside cli/ holds no command-line flag text (errors name parameters; the CLI translates);
- imports sit at module top, except for optional dependencies, in cli/ command modules and in the package
  root, which import the library lazily so that `clipforge --help` and `import clipforge` do not load torch,
  scikit-learn, faiss and FastAPI.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

SRC = Path(__file__).parents[1] / "src" / "clipforge"

# Lowest first. Same-layer imports are allowed as long as the package graph stays acyclic.
LAYERS = [
    {"errors", "atomic", "output_dirs", "json_file", "registry", "progress"},
    {"models", "data", "losses", "metrics"},
    {"encode"},
    {"scale"},
    {"zeroshot", "adapt", "retrieval", "curate", "explain"},
    {"evaluate"},
    {"train", "serve", "tour", "tour_pretrained"},
    {"cli"},
]
LAYER = {pkg: i for i, layer in enumerate(LAYERS) for pkg in layer}
# Optional dependencies (extras) may be imported where they are used, so the core works without them.
OPTIONAL = ("transformers", "open_clip", "huggingface_hub", "webdataset", "torch.utils.tensorboard", "ftfy",
            "sentencepiece", "google.protobuf", "uvicorn", "fastapi", "ray", "py3langid", "onnx", "onnxruntime",
            "openvino", "timm")


def _module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(SRC.rglob("*.py"))}


def _is_package(name: str) -> bool:
    return MODULES.get(name, Path()).name == "__init__.py"


def _resolve(module: str, node) -> list[tuple[str, ast.AST]]:
    """The clipforge modules an import statement imports."""
    out = []
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        base = node.module or ""
        if node.level:
            pkg = module if _is_package(module) else module.rsplit(".", 1)[0]
            for _ in range(node.level - 1):
                pkg = pkg.rsplit(".", 1)[0]
            base = f"{pkg}.{base}" if base else pkg
        names = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
    for name in names:
        while name and name not in MODULES:  # `import a.b.c` of a non-module attribute path
            name = name.rpartition(".")[0]
        if name.startswith("clipforge"):
            out.append((name, node))
    return out


def _imports():
    """module -> [(imported clipforge module, node, is_function_local)]."""
    graph = {}
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        top = {id(n) for n in tree.body}
        for n in tree.body:  # imports inside a module-level `try` / `if` still run at import time
            if isinstance(n, (ast.Try, ast.If)):
                top |= {id(c) for c in ast.walk(n)}
        edges = []
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                edges += [(t, node, id(node) not in top) for t, _ in _resolve(name, node)]
        graph[name] = edges
    return graph


GRAPH = _imports()


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "clipforge"


def _cycles(graph: dict[str, set]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_every_package_has_a_layer():
    packages = {_package(m) for m in MODULES} - {"clipforge", "__main__"}
    assert packages <= set(LAYER), sorted(packages - set(LAYER))


def test_imports_only_point_down():
    upward = []
    for mod, edges in GRAPH.items():
        src = _package(mod)
        if src not in LAYER:  # the package root re-exports lazily; __main__ runs the CLI
            continue
        for target, node, _ in edges:
            dst = _package(target)
            if dst in LAYER and LAYER[dst] > LAYER[src]:
                upward.append(f"{mod}:{node.lineno} imports {target} ({src} is below {dst})")
    assert not upward, "\n".join(upward)


def test_no_import_cycles_between_packages_or_modules():
    modules = {m: {t for t, _, _ in edges if t != m} for m, edges in GRAPH.items()}
    assert not _cycles(modules), _cycles(modules)
    packages: dict[str, set] = {}
    for m, targets in modules.items():
        packages.setdefault(_package(m), set()).update(_package(t) for t in targets if _package(t) != _package(m))
    assert not _cycles(packages), _cycles(packages)


def test_the_checks_catch_what_they_should():
    """The detectors fire on a planted cycle and a planted upward import (so the tests above can fail)."""
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    node = ast.parse("from clipforge.evaluate.runner import run_eval").body[0]
    [(target, _)] = _resolve("clipforge.models.clip", node)
    assert target == "clipforge.evaluate.runner" and LAYER[_package(target)] > LAYER["models"]
    rel = ast.parse("from .tasks import TASKS").body[0]
    assert _resolve("clipforge.evaluate.runner", rel)[0][0] == "clipforge.evaluate.tasks"


_FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")


def test_no_command_line_flags_in_library_code():
    found = []
    for mod, path in MODULES.items():
        if _package(mod) == "cli":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                for m in _FLAG.finditer(node.value):
                    found.append(f"{mod}:{node.lineno}: {m.group()}")
    assert not found, "\n".join(found)


@pytest.mark.parametrize("text, flags", [("pass --k-shot 4", ["--k-shot"]), ("a -- b, x--y, ---", [])])
def test_flag_pattern(text, flags):
    assert _FLAG.findall(text) == flags


def test_imports_at_module_top():
    local = []
    for mod, path in MODULES.items():
        if _package(mod) in ("cli", "clipforge"):  # the CLI and `import clipforge` stay light (see docstring)
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        top = {id(n) for n in tree.body}
        for n in tree.body:
            if isinstance(n, (ast.Try, ast.If)):
                top |= {id(c) for c in ast.walk(n)}
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)) and id(node) not in top:
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                if not all(any(n == o or n.startswith(o + ".") for o in OPTIONAL) for n in names):
                    local.append(f"{mod}:{node.lineno}: {ast.unparse(node)}")
    assert not local, f"{len(local)} function-local imports:\n" + "\n".join(local)
