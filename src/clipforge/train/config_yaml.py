"""YAML for training configs, bounded: safe types only, a key given twice in one mapping refused, and refused
(one line, before anything copies it) when its aliases expand to more than `MAX_CONFIG_VALUES` values (a
"billion laughs" file would otherwise hang while memory grows), when an alias refers to the node that holds
it, or when it nests deeper than `MAX_CONFIG_DEPTH`.
"""
from __future__ import annotations

from typing import Any, Dict

import yaml

from clipforge.errors import UsageError

MAX_CONFIG_VALUES = 100_000  # scalars, lists and mappings in one YAML document, aliases expanded
MAX_CONFIG_DEPTH = 64  # nesting of lists and mappings


class _StrictLoader(yaml.SafeLoader):
    """The safe loader, refusing a key given twice in one mapping (YAML would keep the last silently, so a
    second `optim:` section would replace the first whole). Keys merged in with `<<` may be overridden."""

    def construct_mapping(self, node, deep=False):
        seen: set = set()
        for key_node, _ in node.value if isinstance(node, yaml.MappingNode) else ():
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                dup = key in seen
                seen.add(key)
            except TypeError:  # an unhashable key: the base loader reports it
                continue
            if dup:
                raise yaml.constructor.ConstructorError("while constructing a mapping", node.start_mark,
                                                        f"found duplicate key {key!r}", key_node.start_mark)
        return super().construct_mapping(node, deep)


def parse_yaml(text: str, what: str) -> Any:
    """`yaml.safe_load(text)`, bounded: `UsageError` (naming `what`) for invalid YAML, for aliases that expand
    to more than MAX_CONFIG_VALUES values or refer to their own container, and for nesting deeper than
    MAX_CONFIG_DEPTH. Sizes are counted over the alias graph without expanding it."""
    try:
        value = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        problem = " ".join(str(getattr(e, "problem", None) or e).split())[:300]
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise UsageError(f"{what} is not valid YAML ({problem}{where})") from None
    except ValueError as e:  # an integer of more digits than Python converts (sys.int_info.str_digits_check_threshold)
        if "digits" not in str(e):
            raise
        raise UsageError(f"{what}: a number with more than 4,300 digits (no setting needs one)") from None
    except RecursionError:
        raise UsageError(f"{what}: YAML nested too deeply (at most {MAX_CONFIG_DEPTH} levels)") from None
    _check_yaml_size(value, what)
    return value


def _check_yaml_size(root: Any, what: str) -> None:
    size: Dict[int, int] = {}  # id(container) -> values it holds once expanded (itself included)
    depth: Dict[int, int] = {}
    open_: set = set()  # containers whose children are still being counted: meeting one again is a cycle
    stack = [(root, False)]
    while stack:
        node, done = stack.pop()
        if not isinstance(node, (dict, list)) or (id(node) in size and not done):
            continue
        children = [*node.keys(), *node.values()] if isinstance(node, dict) else node
        if done:
            open_.discard(id(node))
            size[id(node)] = 1 + sum(size.get(id(c), 1) for c in children)
            depth[id(node)] = 1 + max((depth.get(id(c), 0) for c in children), default=0)
            if size[id(node)] > MAX_CONFIG_VALUES:
                raise UsageError(f"{what}: YAML whose aliases expand to over {MAX_CONFIG_VALUES:,} values "
                                 "(refused before expanding it)")
            if depth[id(node)] > MAX_CONFIG_DEPTH:
                raise UsageError(f"{what}: YAML nested too deeply (at most {MAX_CONFIG_DEPTH} levels)")
            continue
        if id(node) in open_:
            raise UsageError(f"{what}: a YAML alias refers to the list or mapping that contains it")
        open_.add(id(node))
        stack.append((node, True))
        stack.extend((c, False) for c in children if isinstance(c, (dict, list)))
