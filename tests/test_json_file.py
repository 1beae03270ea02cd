"""read_json_file: every JSON file clipforge reads but may not have written (checkpoint config.json, index.json,
adapter configs, store manifests) is bounded in size and broken in one line about the file."""
import json
import os
import threading

import pytest

from clipforge.errors import ClipforgeError
from clipforge.json_file import read_json_file
from clipforge.models.checkpoint import read_config_json
from clipforge.retrieval.index_dir import read_info


def test_reads_what_it_should(tmp_path):
    p = tmp_path / "a.json"
    p.write_text(json.dumps({"é": [1, 2.5, None]}), encoding="utf-8")
    assert read_json_file(p) == {"é": [1, 2.5, None]}


@pytest.mark.parametrize("body, says", [
    (b"[" * 100_000, "nested too deeply"),
    (b'{"n": ' + b"9" * 5000 + b"}", "more than 4,300 digits"),
    (b'{"a": "caf\xe9"}', "not UTF-8"),
    (b'{"a": 1,,}', "line 1 column"),
])
def test_broken_files_are_one_line_about_the_file(tmp_path, body, says):
    p = tmp_path / "config.json"
    p.write_bytes(body)
    with pytest.raises(ClipforgeError, match=says) as e:
        read_json_file(p)
    msg = str(e.value)
    assert "\n" not in msg and str(p) in msg and "sys." not in msg and len(msg) < 400


def test_size_is_capped_before_reading_it_all(tmp_path):
    p = tmp_path / "big.json"
    p.write_bytes(b"[" + b" " * 2000 + b"]")
    assert read_json_file(p, max_bytes=4096) == []
    with pytest.raises(ClipforgeError, match="is over"):
        read_json_file(p, max_bytes=1000)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_a_fifo_under_the_name_is_refused_without_hanging(tmp_path):
    fifo = tmp_path / "index.json"
    os.mkfifo(fifo)
    out = {}

    def read():
        try:
            read_json_file(fifo)
        except ClipforgeError as e:
            out["err"] = str(e)

    t = threading.Thread(target=read, daemon=True)
    t.start()
    t.join(10)
    assert not t.is_alive(), "reading a FIFO hung"
    assert "not a regular file" in out["err"]
    # the readers built on it say which file they were reading
    with pytest.raises(ClipforgeError, match="cannot read the index manifest"):
        read_info(tmp_path)


def test_checkpoint_config_errors_name_the_file(tmp_path):
    (tmp_path / "config.json").write_bytes(b"[1, 2")
    with pytest.raises(ClipforgeError, match="config.json is not valid JSON"):
        read_config_json(tmp_path)
