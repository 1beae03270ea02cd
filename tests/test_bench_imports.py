"""Every bench/ script still imports what it names from clipforge: refactors move modules (the #12 split moved
the demo builders to `clipforge.data.demo_sets`), and a bench that no longer starts is found only when someone
needs its numbers. Parses the scripts (nothing runs) and resolves each `from clipforge... import name`."""
import ast
import importlib
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
SCRIPTS = sorted(BENCH.glob("*.py"))


def _clipforge_imports(path: Path):
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "clipforge":
            yield node.lineno, node.module, [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "clipforge":
                    yield node.lineno, a.name, []


def test_there_are_bench_scripts():
    assert len(SCRIPTS) >= 5


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_bench_script_imports_resolve(script):
    problems = []
    for line, module, names in _clipforge_imports(script):
        try:
            mod = importlib.import_module(module)
        except ImportError as e:
            problems.append(f"{script.name}:{line}: {module}: {e}")
            continue
        for name in names:
            if name != "*" and not hasattr(mod, name):
                try:
                    importlib.import_module(f"{module}.{name}")
                except ImportError:
                    problems.append(f"{script.name}:{line}: {module} has no {name}")
    assert not problems, "\n".join(problems)
