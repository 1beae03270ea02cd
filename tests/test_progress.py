"""Progress of long jobs (`clipforge.progress`): a bar on a terminal; log lines with done/total, rate and ETA
when stderr is a file or a pipe (and a final line); nothing with progress=False. Checked on the reporter itself,
on the encoding batches every job goes through, on the few-shot protocol, on curation scoring, on data
conversion, and end to end on `clipforge embed-dataset` with its output piped."""
from __future__ import annotations

import io
import logging
import os
import re
import subprocess
import sys

import pytest
import torch
from PIL import Image

from clipforge.data.sources.filelist import FileListSource
from clipforge.encode import Encoder, SourceFeatures, iter_image_batches
from clipforge.errors import UsageError
from clipforge.progress import INTERVAL_ENV, Progress, progress_interval, track

LOGGER = "clipforge.progress"
LINE = re.compile(r"(?P<desc>[\w -]+): (?P<done>\d+)/(?P<total>\d+) (?P<unit>\w+) \(\d+%\), [\d.]+ \w+/(s|min), "
                  r"elapsed \d+\w*(, ETA \w+)?")
FINAL = re.compile(r"(?P<desc>[\w -]+): done (?P<done>\d+)/(?P<total>\d+) (?P<unit>\w+) in \w+, [\d.]+ \w+/(s|min)")


class _Stream(io.StringIO):
    def __init__(self, tty: bool):
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


@pytest.fixture
def piped(monkeypatch, caplog):
    """Every update may log (interval 0 from the environment), INFO captured; call `_pipe` in the test (pytest
    sets its own sys.stderr for each phase) to make stderr a non-terminal stream."""
    monkeypatch.setenv(INTERVAL_ENV, "0")
    caplog.set_level(logging.INFO, logger=LOGGER)
    return caplog


def _pipe(monkeypatch, tty: bool = False) -> _Stream:
    stream = _Stream(tty=tty)
    monkeypatch.setattr(sys, "stderr", stream)
    return stream


def _lines(caplog, desc: str):
    msgs = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    return ([m for m in msgs if (x := LINE.fullmatch(m.split(", method=")[0])) and x["desc"] == desc],
            [m for m in msgs if (x := FINAL.fullmatch(m)) and x["desc"] == desc], msgs)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("progress_images")
    paths = []
    for i in range(7):
        p = root / f"im{i}.png"
        Image.new("RGB", (8, 8), (30 * i, 10, 200)).save(p)
        paths.append(str(p))
    return paths


def _pixels(image):
    return torch.zeros(3, 2, 2)


def test_piped_batches_log_done_total_rate_and_a_final_line(piped, images, monkeypatch):
    stderr = _pipe(monkeypatch)
    n = sum(len(b) for b in iter_image_batches(FileListSource(images), _pixels, batch_size=2, progress=None,
                                               desc="images"))
    lines, final, _ = _lines(piped, "images")
    assert n == 7
    assert lines and all(LINE.fullmatch(m)["total"] == "7" and LINE.fullmatch(m)["unit"] == "img" for m in lines)
    assert [LINE.fullmatch(m)["done"] for m in lines] == ["2", "4", "6", "7"]  # one per batch at interval 0
    assert len(final) == 1 and FINAL.fullmatch(final[0])["done"] == "7"
    assert stderr.getvalue() == ""  # no bar drawn into a pipe


def test_progress_false_is_silent(piped, images, monkeypatch):
    stderr = _pipe(monkeypatch)
    list(iter_image_batches(FileListSource(images), _pixels, batch_size=2, progress=False, desc="images"))
    assert not [r for r in piped.records if r.name == LOGGER] and stderr.getvalue() == ""


def test_a_terminal_gets_a_bar_and_no_log_lines(piped, images, monkeypatch):
    tty = _pipe(monkeypatch, tty=True)
    list(iter_image_batches(FileListSource(images), _pixels, batch_size=2, progress=None, desc="images"))
    assert "images" in tty.getvalue() and "7/7" in tty.getvalue()
    assert not [r for r in piped.records if r.name == LOGGER]


def test_progress_true_forces_the_bar_into_a_pipe(caplog):
    stream = _Stream(tty=False)
    caplog.set_level(logging.INFO, logger=LOGGER)
    with Progress(3, desc="forced", unit="it", progress=True, stream=stream, interval=0) as bar:
        for _ in range(3):
            bar.update(1)
    assert bar.mode == "bar" and "3/3" in stream.getvalue()
    assert not [r for r in caplog.records if r.name == LOGGER]


def test_lines_follow_the_interval_not_every_update(caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    with Progress(50, desc="slow", unit="it", stream=_Stream(tty=False), interval=3600) as bar:
        for _ in range(50):
            bar.update(1)
    lines, final, _ = _lines(caplog, "slow")
    assert bar.mode == "log" and lines == []  # an hour between lines: none during a quick job


def test_unknown_total_and_an_early_stop_say_so(caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    for i, _ in enumerate(track(iter(range(10)), desc="stream", unit="row", stream=_Stream(tty=False), interval=0)):
        if i == 3:
            break
    msgs = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    assert msgs[0].startswith("stream: 1 row, ") and "ETA" not in msgs[0]
    assert msgs[-1].startswith("stream: done 3 row in ")
    caplog.clear()
    gen = track(list(range(10)), desc="cut", unit="row", stream=_Stream(tty=False), interval=0)
    next(gen), next(gen)
    gen.close()
    assert caplog.records[-1].getMessage().startswith("cut: stopped at 1/10 row in ")


def test_interval_from_the_environment(monkeypatch):
    monkeypatch.delenv(INTERVAL_ENV, raising=False)
    assert progress_interval() == 10.0
    monkeypatch.setenv(INTERVAL_ENV, "2.5")
    assert progress_interval() == 2.5 and progress_interval(7) == 7.0
    for bad in ("soon", "-1", "nan"):
        monkeypatch.setenv(INTERVAL_ENV, bad)
        with pytest.raises(UsageError, match=INTERVAL_ENV):
            progress_interval()
    with pytest.raises(UsageError, match="`interval`"):
        progress_interval(-3)


def test_fewshot_protocol_logs_each_method_k_seed_step(piped, monkeypatch):
    _pipe(monkeypatch)
    from clipforge.evaluate.fewshot_task import evaluate_fewshot
    from clipforge.models import create_model

    torch.manual_seed(0)
    enc = Encoder.from_model(create_model("tiny").eval())
    g = torch.Generator().manual_seed(0)
    y = torch.arange(3).repeat_interleave(6)
    x = torch.nn.functional.normalize(torch.randn(len(y), enc.embed_dim, generator=g), dim=-1)
    feats = SourceFeatures(x, [str(i) for i in range(len(y))], [[] for _ in y], y.tolist())
    evaluate_fewshot(enc, feats, feats, ["a", "b", "c"], methods=["tip-adapter"], shots=[1, 2], seeds=[0, 1],
                     templates="photo", search_steps=2)
    lines, final, msgs = _lines(piped, "few-shot")
    assert [LINE.fullmatch(m.split(", method=")[0])["done"] for m in lines] == ["1", "2", "3", "4"]
    assert all(LINE.fullmatch(m.split(", method=")[0])["total"] == "4" for m in lines)
    assert "method=tip-adapter k=2 seed=1" in lines[-1] and len(final) == 1


def test_curate_scoring_logs_progress(piped, monkeypatch, digits_demo, tmp_path):
    _pipe(monkeypatch)
    from clipforge.curate import score_source
    from curate_fixtures import digits_rows, write_manifest

    spec = write_manifest(tmp_path / "pairs.jsonl", digits_rows(digits_demo, 9))
    score_source(spec, Encoder.load("tiny", precision="fp32"), tmp_path / "s.parquet", batch_size=4,
                 part_size=8, lang=False, texts=False)
    lines, final, _ = _lines(piped, "scoring")
    assert [LINE.fullmatch(m)["done"] for m in lines] == ["4", "8", "9"] and len(final) == 1


def test_data_convert_logs_progress(piped, monkeypatch, images, tmp_path):
    _pipe(monkeypatch)
    from clipforge.data.write import convert

    convert(FileListSource(images), "jsonl", str(tmp_path / "out.jsonl"))
    lines, final, _ = _lines(piped, "converting")
    assert lines and LINE.fullmatch(lines[-1])["done"] == "7" and len(final) == 1


def test_cli_embed_dataset_piped_prints_progress_to_stderr(images, tmp_path):
    env = {**os.environ, INTERVAL_ENV: "0"}
    proc = subprocess.run([sys.executable, "-m", "clipforge", "embed-dataset", f"files:{os.path.dirname(images[0])}",
                           "-m", "tiny", "--out", str(tmp_path / "emb"), "--batch-size", "2", "--no-text"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    progress = [ln.split("clipforge.progress: ", 1)[1] for ln in proc.stderr.splitlines()
                if "clipforge.progress: embedding:" in ln]
    lines = [m for m in progress if LINE.fullmatch(m.split(", skipped=")[0])]
    assert lines and LINE.fullmatch(lines[-1].split(", skipped=")[0])["done"] == "7"
    assert any(FINAL.fullmatch(m) for m in progress)
    assert "clipforge.progress" not in proc.stdout and "embedded" in proc.stdout
