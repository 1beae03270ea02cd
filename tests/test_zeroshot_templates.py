"""Template sets, user template files, filling."""
import pytest

from clipforge.errors import UsageError
from clipforge.zeroshot.templates import (
    TEMPLATE_SETS,
    fill,
    get_templates,
    list_template_sets,
    load_template_file,
    templates_hash,
)


def test_openai_sets():
    t80 = get_templates("openai_imagenet")
    assert len(t80) == 80 and len(set(t80)) == 80
    assert "a photo of the hard to see {c}." in t80 and "itap of my {c}." in t80
    t7 = get_templates("short")
    assert len(t7) == 7 and set(t7) <= set(t80)
    assert get_templates(None) == t80
    assert all("{c}" in t for ts in TEMPLATE_SETS.values() for t in ts)


def test_fill_uses_placeholder_only():
    assert fill("a {c} with {braces}.", "cat") == "a cat with {braces}."


def test_user_file(tmp_path):
    p = tmp_path / "t.txt"
    p.write_text("# my prompts\na photo of a {c}.\n\nOpenAI style {}\n", encoding="utf-8")
    assert load_template_file(p) == ["a photo of a {c}.", "OpenAI style {c}"]
    assert get_templates(str(p)) == load_template_file(p)
    (tmp_path / "bad.txt").write_text("no placeholder here\n")
    with pytest.raises(UsageError, match="placeholder"):
        load_template_file(tmp_path / "bad.txt")


def test_unknown_name_lists_choices():
    with pytest.raises(UsageError) as e:
        get_templates("nope")
    assert all(name in str(e.value) for name in list_template_sets())


def test_hash_stable_and_order_sensitive():
    a = ["a {c}.", "the {c}."]
    assert templates_hash(a) == templates_hash(list(a))
    assert templates_hash(a) != templates_hash(a[::-1])
