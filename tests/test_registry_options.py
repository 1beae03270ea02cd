"""Entries of one registry share a flag per option name: a second entry declaring the same name with another
type or other choices would silently lose its own (the captioning task's `method` once took over
`clipforge eval --method`, so `--method zpe` failed)."""
from __future__ import annotations

import pytest

from clipforge.errors import ClipforgeError
from clipforge.registry import Option, Registry


def _registry(*decls):
    reg = Registry("thing")
    for name, opt in decls:
        reg.register(name)(type(name.title(), (), {"options": (opt,)}))
    return reg


def test_conflicting_options_name_both_entries():
    reg = _registry(("alpha", Option("method", str, "mean", choices=("mean", "zpe"))),
                    ("beta", Option("method", str, "beam", choices=("greedy", "beam"))))
    with pytest.raises(ClipforgeError, match="'alpha' and 'beta' both declare option 'method'"):
        reg.all_options()


def test_agreeing_options_share_one_flag():
    reg = _registry(("alpha", Option("k", int, 1)), ("beta", Option("k", int, 5)))
    assert list(reg.all_options()) == ["k"]


def test_every_eval_task_option_has_one_meaning():
    from clipforge.evaluate import TASKS

    options = TASKS.all_options()  # raises on a conflict
    assert "decoding" in options and set(options["method"].choices) >= {"mean", "zpe"}
