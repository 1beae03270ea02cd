"""docs/architecture.md matches the tree: its module list names every module and package under src/clipforge
and nothing else, and its registry lists name exactly what each registry holds.

The module list is the code block of the "## Modules" section: one entry per line, `name.py` or `name/`
(a package; its `__init__.py` is not listed), indented two spaces per level below `src/clipforge/`, then two
or more spaces and what it holds. A line that continues a description is indented past its entry's name.

The registry lists are the "## Registries" section's bullets: "- `dotted.path.NAME` what: `entry`, `entry`"
(continued on indented lines), one per `Registry(...)` assigned at a module's top level under src/clipforge,
plus the name registries that are functions (`NAME_LISTS`).
"""
from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
SRC = ROOT / "src" / "clipforge"
DOC = ROOT / "docs" / "architecture.md"
# Name registries that are not `Registry` objects: a function returning the registered names
NAME_LISTS = ("clipforge.models.list_models",)

_ENTRY = re.compile(r"^( *)([A-Za-z_]\w*(?:\.py|/))(?: {2,}\S.*)?$")


def _section(text: str, title: str) -> list[str]:
    lines = text.splitlines()
    try:
        start = lines.index(f"## {title}") + 1
    except ValueError:
        pytest.fail(f"{DOC.relative_to(ROOT)} has no '## {title}' section")
    end = next((i for i in range(start, len(lines)) if lines[i].startswith("## ")), len(lines))
    return lines[start:end]


def parse_module_list(text: str) -> tuple[list[str], list[str]]:
    """(entries as paths relative to src/clipforge, e.g. 'models/config.py', 'models/'; lines it cannot read)."""
    section = _section(text, "Modules")
    fences = [i for i, line in enumerate(section) if line.startswith("```")]
    if len(fences) < 2:
        return [], ["the Modules section has no code block"]
    block = section[fences[0] + 1:fences[1]]
    if not block or block[0].strip() != "src/clipforge/":
        return [], ["the code block must start with src/clipforge/"]
    entries, bad, stack = [], [], []  # stack: (indent, folder) of the packages the current line is inside
    last_indent = 0
    for line in block[1:]:
        if not line.strip():
            continue
        m = _ENTRY.match(line)
        indent = len(line) - len(line.lstrip(" "))
        if m is None or indent % 2 or indent < 2:
            if indent <= last_indent:  # a continuation must be indented past its entry's name
                bad.append(line)
            continue
        while stack and stack[-1][0] >= indent:
            stack.pop()
        if indent != 2 * (len(stack) + 1):
            bad.append(line)
            continue
        name = m.group(2)
        path = "".join(folder for _, folder in stack) + name
        entries.append(path)
        if name.endswith("/"):
            stack.append((indent, name))
        last_indent = indent
    return entries, bad


def tree_modules(src: Path = SRC) -> set[str]:
    """Every module ('a/b.py') and package ('a/') under `src`, relative to it (packages' __init__.py aside)."""
    out = set()
    for p in src.rglob("*.py"):
        if "__pycache__" in p.parts:
            continue
        rel = p.relative_to(src)
        if p.name == "__init__.py":
            if rel.parent != Path("."):
                out.add(rel.parent.as_posix() + "/")
        elif rel.as_posix() != "__main__.py":
            out.add(rel.as_posix())
    return out


def module_list_mismatch(listed: list[str], tree: set[str]) -> str:
    """'' when `listed` names exactly `tree`; otherwise which are missing, extra or listed twice."""
    missing = sorted(tree - set(listed))
    extra = sorted(set(listed) - tree)
    twice = sorted({x for x in listed if listed.count(x) > 1})
    parts = [f"not listed (add them): {', '.join(missing)}" if missing else "",
             f"listed but not in src/clipforge (remove or rename them): {', '.join(extra)}" if extra else "",
             f"listed twice: {', '.join(twice)}" if twice else ""]
    return "; ".join(p for p in parts if p)


def test_the_module_list_is_the_tree():
    listed, bad = parse_module_list(DOC.read_text(encoding="utf-8"))
    assert not bad, "docs/architecture.md module list lines that are neither an entry nor a continuation:\n" + \
        "\n".join(bad)
    problem = module_list_mismatch(listed, tree_modules())
    assert not problem, f"docs/architecture.md's module list does not match src/clipforge: {problem}"


def test_the_module_list_check_can_fail(tmp_path):
    """The parser and the comparison on a planted tree and doc: a missing, an extra and a nested module."""
    for rel in ("a.py", "pkg/__init__.py", "pkg/b.py", "pkg/sub/__init__.py", "pkg/sub/c.py", "__main__.py"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("")
    assert tree_modules(tmp_path) == {"a.py", "pkg/", "pkg/b.py", "pkg/sub/", "pkg/sub/c.py"}
    doc = ("## Modules\n\n```\nsrc/clipforge/\n  a.py      one\n  pkg/      two\n    sub/    three\n"
           "      c.py  four, continued\n            on a second line\n  gone.py  five\n```\n")
    listed, bad = parse_module_list(doc)
    assert bad == [] and listed == ["a.py", "pkg/", "pkg/sub/", "pkg/sub/c.py", "gone.py"]
    assert module_list_mismatch(listed, tree_modules(tmp_path)) == (
        "not listed (add them): pkg/b.py; listed but not in src/clipforge (remove or rename them): gone.py")
    _, bad = parse_module_list(doc.replace("  gone.py  five", "oops"))
    assert bad == ["oops"]


def registries_in_source(src: Path = SRC) -> set[str]:
    """'clipforge.pkg.module.NAME' of every `NAME = Registry(...)` at a module's top level."""
    out = set()
    for p in src.rglob("*.py"):
        for node in ast.parse(p.read_text(encoding="utf-8")).body:
            if (isinstance(node, ast.Assign) and isinstance(node.value, ast.Call)
                    and getattr(node.value.func, "id", None) == "Registry"):
                parts = list(p.relative_to(src.parent).with_suffix("").parts)
                module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
                out |= {f"{module}.{t.id}" for t in node.targets if isinstance(t, ast.Name)}
    return out


def parse_registry_lists(text: str) -> dict[str, list[str]]:
    """'dotted.path' -> the entries its bullet lists."""
    out, current = {}, None
    for line in _section(text, "Registries"):
        m = re.match(r"^- `(clipforge(?:\.\w+)+)`[^:]*:(.*)$", line)
        if m:
            current = m.group(1)
            out[current] = re.findall(r"`([^`]+)`", m.group(2))
        elif current and line.startswith("  ") and line.strip():
            out[current] += re.findall(r"`([^`]+)`", line)
        else:
            current = None
    return out


def registered_names(path: str) -> list[str]:
    """What the registry (or name-list function) at `path` holds once its packages are imported (each
    package's `__init__` registers its built-in entries)."""
    module, _, attr = path.rpartition(".")
    parts = module.split(".")
    for i in range(2, len(parts) + 1):
        importlib.import_module(".".join(parts[:i]))
    obj = getattr(importlib.import_module(module), attr)
    return sorted(obj.names() if hasattr(obj, "names") else obj())


def test_the_registry_lists_are_the_registries():
    listed = parse_registry_lists(DOC.read_text(encoding="utf-8"))
    want = registries_in_source() | set(NAME_LISTS)
    assert set(listed) == want, (f"docs/architecture.md's Registries section: not listed: "
                                 f"{sorted(want - set(listed))}; listed but no such registry: "
                                 f"{sorted(set(listed) - want)}")
    wrong = []
    for path, names in sorted(listed.items()):
        have = registered_names(path)
        if sorted(names) != have:
            wrong.append(f"{path}: not listed {sorted(set(have) - set(names))}, "
                         f"not registered {sorted(set(names) - set(have))}")
    assert not wrong, "docs/architecture.md's registry lists differ from the registries:\n" + "\n".join(wrong)


def test_the_registry_parser_reads_continued_bullets():
    doc = ("## Registries\n\n- `clipforge.x.R` things: `a`, `b`,\n  `c`\n- `clipforge.y.S`: `d`\n\ntext `e`\n"
           "## Next\n- `clipforge.z.T`: `f`\n")
    assert parse_registry_lists(doc) == {"clipforge.x.R": ["a", "b", "c"], "clipforge.y.S": ["d"]}
