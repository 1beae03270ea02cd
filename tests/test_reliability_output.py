"""Hostile text in human-readable outputs (reliability issue): file names, captions, class names and paths that
hold a newline, an escape sequence (`ESC [2J` clears a terminal), a bidi override, NUL, a lone surrogate or a `|`
reach every human-readable output — `search` lines, `index` summaries, contact-sheet labels, the curation
report.md, the evaluation report, `classify` and `embed` lines — only escaped (`clipforge.data.display.shown`):
each hit is one line, no control character reaches the terminal raw, markdown tables keep their columns, and
printable non-ASCII (é, 日本) is written as itself. JSON outputs keep the text raw (JSON escapes it)."""
import json
import os
import re

import numpy as np
import pytest
from PIL import Image, ImageDraw

from clipforge.cli import main
from clipforge.data.display import shown, shown_cell, shown_code, shown_label
from data_fixtures import pattern

# stem -> caption (a JSON sidecar, so any character can be in it)
HOSTILE = {
    "new\nline": "two\nlines \x1b[31mred\x1b[0m",
    "clear\x1b[2J": "nul\x00 byte |pipe| `tick`",
    "bidi\u202egnp": "lone \udc80 surrogate\r",
    "café 日本": "é 日本 printable caption",
}
RAW_NAME = b"raw\xffbyte"  # not UTF-8: Python decodes it with a lone surrogate (U+DCFF)
PRINTABLE = ("café 日本.png", "é 日本 printable caption")
K = len(HOSTILE) + 1


def _clean(text: str) -> list[str]:
    """The lines of `text`, each asserted printable: no control, format (bidi) or surrogate character."""
    lines = text.rstrip("\n").split("\n")
    for line in lines:
        assert line.isprintable(), repr(line)
    return lines


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile-text")
    d = root / "col|`x\x1b[2J"  # the folder's own name reaches report.md and `index info`
    d.mkdir()
    for i, (stem, caption) in enumerate(HOSTILE.items()):
        Image.fromarray(pattern(24, 24, i)).save(d / f"{stem}.png")
        (d / f"{stem}.json").write_text(json.dumps({"caption": caption}))
    raw = os.path.join(os.fsencode(d), RAW_NAME)
    Image.fromarray(pattern(24, 24, 9)).save(raw + b".png")
    with open(raw + b".txt", "w") as f:
        f.write("tab\there\n")
    return root, d


@pytest.fixture(scope="module")
def index(collection, tmp_path_factory):
    root, d = collection
    idx = tmp_path_factory.mktemp("idx") / "in\ndex\x1b[2J"  # the index folder's name is printed too
    out = _run_module(["index", "build", f"files:{d}", "--model", "tiny", "--out", str(idx), "--workers", "0"])
    return str(idx), out


def _run_module(argv) -> str:
    """main(argv) with stdout captured by a real text stream (as a terminal gets it)."""
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(argv) == 0
    return buf.getvalue()


@pytest.fixture
def drawn(monkeypatch):
    """Every string drawn on a PIL image while the test runs (contact-sheet labels)."""
    texts: list[str] = []
    original = ImageDraw.ImageDraw.text

    def spy(self, xy, text, *a, **kw):
        texts.append(text)
        return original(self, xy, text, *a, **kw)

    monkeypatch.setattr(ImageDraw.ImageDraw, "text", spy)
    return texts


# -- display: the escaping itself ------------------------------------------------------------------------

def test_shown_escapes_what_is_not_printable_and_keeps_what_is():
    assert shown("a\nb\x1b[2J\x00\u202e\udc80\r\t\x7f\u2028") == "a\\nb\\x1b[2J\\x00\\u202e\\udc80\\r\\t\\x7f\\u2028"
    for text in ("é 日本", "emoji 👩‍👩‍👧", "plain | pipe `tick` $x$"):
        assert shown(text) == text
    assert shown(None) == "None" and shown(3) == "3"
    assert shown("a\udc80").encode("utf-8")  # valid Unicode: a lone surrogate cannot be encoded, its escape can
    assert shown_cell("a|b\nc") == "a\\|b\\nc"
    assert shown_code("plain") == "`plain`" and shown_code("a`b") == "``a`b``" and shown_code("`x") == "`` `x ``"
    assert shown_label("cost $5 $\\frac$") == "cost \\$5 \\$\\frac\\$"


# -- search and index ------------------------------------------------------------------------------------

def test_index_build_summary_is_clean(index):
    lines = _clean(index[1])
    assert len(lines) == 3 and "in\\ndex\\x1b[2J: 5 items" in lines[0]


def test_search_prints_one_escaped_line_per_hit(index):
    out = _run_module(["search", index[0], "a photo", "-k", str(K)])
    lines = _clean(out)
    assert len(lines) == K + 1  # the header and one line per hit: a newline in a name did not start a line
    text = "\n".join(lines)
    for stem, caption in HOSTILE.items():
        assert shown(f"{stem}.png") in text and shown(caption).strip() in text
    assert "raw\\udcffbyte.png" in text and "tab\\there" in text
    for s in PRINTABLE:
        assert s in text  # printable non-ASCII is written as itself


def test_search_json_keeps_the_text_raw(index):
    out = _run_module(["search", index[0], "a photo", "-k", str(K), "--json"])
    hits = [json.loads(line) for line in out.splitlines()]
    assert len(hits) == K
    keys = {h["key"] for h in hits}
    assert {f"{s}.png" for s in HOSTILE} <= keys
    caps = {h["caption"] for h in hits}
    assert "two\nlines \x1b[31mred\x1b[0m" in caps and "nul\x00 byte |pipe| `tick`" in caps


def test_contact_sheet_labels_are_escaped(index, tmp_path, drawn):
    sheet = tmp_path / "sheet.png"
    out = _run_module(["search", index[0], "a\nphoto\x1b[2J", "-k", str(K), "--sheet", str(sheet)])
    assert len(_clean(out)) == K + 2  # the header, the hits and the "contact sheet:" line
    assert Image.open(sheet).size[0] > 0
    assert drawn and all(t.isprintable() for t in drawn), [t for t in drawn if not t.isprintable()]
    labels = " ".join(drawn)
    assert "a\\nphoto\\x1b[2J" in labels and "two\\nlines" in labels


def test_contact_sheet_library_call_escapes_dict_hits(tmp_path, drawn):
    from clipforge.retrieval.sheet import contact_sheet

    hits = [{"rank": 0, "id": "x\ny", "score": 0.5, "caption": "a\x1b[2Jb\nc"},
            {"rank": 1, "id": 2, "score": 0.4, "key": "k\u202e\x00"}]
    contact_sheet(hits, tmp_path / "s.png", title="t\ni\x1bt")
    assert all(t.isprintable() for t in drawn)
    assert any("x\\ny" in t for t in drawn) and any("k\\u202e\\x00" in t for t in drawn)


def test_index_delete_and_info_are_clean(index, tmp_path):
    out = _run_module(["index", "delete", index[0], "--path", "*", "--dry-run"])
    lines = _clean(out)
    assert any("clear\\x1b[2J.png" in ln for ln in lines) and any("café 日本.png" in ln for ln in lines)
    assert any("\\u202e" in ln for ln in lines)
    out = _run_module(["index", "info", index[0]])
    assert any("col|`x\\x1b[2J" in ln for ln in _clean(out))


def test_data_check_text_output_is_clean(collection):
    out = _run_module(["data", "check", f"files:{collection[1]}"])
    _clean(out)


# -- classify and embed ----------------------------------------------------------------------------------

def test_classify_prints_one_escaped_line_per_image(collection, tmp_path):
    d = collection[1]
    labels = tmp_path / "labels.txt"
    labels.write_text("dog\x1b[2J\ncat \u202eevil\ncafé 日本\n")
    images = [str(d / f"{s}.png") for s in HOSTILE]
    out = _run_module(["classify", "-m", "tiny", "--labels-file", str(labels), "--templates", "photo", "-k", "3",
                       *images])
    lines = _clean(out)
    assert len(lines) == len(images)
    assert all(ln.startswith(shown(p) + ": ") for ln, p in zip(lines, images))
    assert "café 日本" in out and "dog\\x1b[2J" in out


def test_embed_prints_one_escaped_line_per_input(collection):
    path = str(collection[1] / "new\nline.png")
    out = _run_module(["embed", "--model", "tiny", "--image", path, "--text", "a\nb\x1b[2J"])
    lines = _clean(out)
    assert len(lines) == 2 and lines[0].endswith("a\\nb\\x1b[2J") and lines[1].endswith(shown(path))


# -- reports ---------------------------------------------------------------------------------------------

_PIPE = re.compile(r"(?<!\\)\|")


def _table_rows_keep_their_columns(md: str) -> int:
    """Each markdown table row has as many unescaped `|` as its header; returns the rows checked."""
    n, want = 0, None
    for line in md.split("\n"):
        if not line.startswith("|"):
            want = None
            continue
        cells = len(_PIPE.findall(line))
        if want is None:
            want = cells
        assert cells == want, line
        n += 1
    return n


def test_curation_report_escapes_names_and_keeps_tables(collection, tmp_path, drawn):
    _, d = collection
    spec = f"files:{d}"
    hostile_out = tmp_path / "o|ut\x1b[2J"
    hostile_out.mkdir()
    scores = hostile_out / "s\n.parquet"
    assert main(["curate", "score", spec, "--model", "tiny", "--out", str(scores), "--workers", "0", "--no-lang",
                 "--precision", "fp32", "--pixel-features"]) == 0
    assert main(["curate", "filter", spec, "--scores", str(scores), "--keep-top", "0.6",
                 "--out", str(hostile_out / "clean`x.jsonl")]) == 0
    assert main(["curate", "dedup", spec, "--scores", str(scores), "--features", "pixels", "--eps", "0.9",
                 "--max-removed", "1", "--out", str(hostile_out / "dd|x.jsonl")]) == 0
    drawn.clear()
    rep = tmp_path / "rep"
    assert main(["curate", "report", str(hostile_out / "clean`x.summary.json"),
                 str(hostile_out / "dd|x.summary.json"), "--out", str(rep), "--examples", "3"]) == 0
    md = (rep / "report.md").read_text()
    _clean(md)
    assert "o|ut\\x1b[2J" in md and "s\\n.parquet" in md and "col|`x\\x1b[2J" in md
    assert "``files:" in md  # a backtick in the source path: the code span is fenced by two
    assert _table_rows_keep_their_columns(md) >= 6
    assert drawn and all(t.isprintable() for t in drawn), [t for t in drawn if not t.isprintable()]
    assert any("\\x1b" in t or "\\n" in t or "\\u202e" in t for t in drawn)  # captions reached the sheets escaped


def test_evaluation_report_escapes_names_and_keeps_tables(tmp_path, capsys):
    from clipforge.evaluate.report import write_report
    from clipforge.evaluate.results import append_result, make_record

    results = tmp_path / "results.jsonl"
    hostile = {"model": "runs/m\nx|y", "dataset": "files:/d/\x1b[2Jcol|z $\\frac$"}
    append_result(results, make_record(hostile["model"], hostile["dataset"], "zeroshot-classification",
                                       {"top1": 0.5}, config={"classes": "a|b\nc"}))
    append_result(results, make_record("café", hostile["dataset"], "zeroshot-classification", {"top1": 0.25},
                                       config={"classes": "d"}))
    append_result(results, make_record(hostile["model"], "digits", "few-shot", {"top1": 0.4, "top1_std": 0.1},
                                       config={"method": "lin\x1b[2Jear", "k_shot": 2}))
    md, out_path, chart = write_report(results, tmp_path / "report.md")
    assert out_path.exists() and chart is not None and chart.exists()  # `$\frac$` is drawn, not parsed
    for text in (md, out_path.read_text()):
        _clean(text)
        assert "runs/m\\nx\\|y" in text and "\\x1b[2Jcol\\|z" in text and "| café |" in text
        assert _table_rows_keep_their_columns(text) >= 6
    assert main(["report", str(results)]) == 0
    assert "runs/m\\nx\\|y" in "\n".join(_clean(capsys.readouterr().out))


def test_confusion_matrix_plot_draws_class_names_as_text(tmp_path):
    from clipforge.evaluate.plots import plot_confusion_matrix

    path = plot_confusion_matrix(np.eye(3), tmp_path / "cm.png",
                                 classnames=["price $\\frac$", "a\nb", "c\x1b[2J"], title="t $x")
    assert Image.open(path).size[0] > 0
