"""Reliability issue, data readers: bounded memory on every input and never silently wrong.

One regression test per class the issue names: webdataset members capped from their headers before a byte is
read (plain and gzip shards, `member_too_large`), non-regular members counted and never followed (`not_a_file`),
a shard cut anywhere keeps every whole sample before the cut (`shard_truncated`, once), huge captions cut to
`max_caption_bytes` in every kind of source (`caption_truncated`, the prefix kept exactly), NUL bytes and
invalid UTF-8 counted as one bad row named `line N`, numbers too long for Python said about the input, and a
`.tar.gz` asked for random access answering with one line. The memory budget is measured in a child process
(VmHWM) running `data check` on tiny shards whose headers claim 1 GiB members.
"""
import gzip
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

import hostile_files as hf
from clipforge.cli import main
from clipforge.data import open_source
from clipforge.data.check import check_source, format_report
from clipforge.data.decode import REASONS
from clipforge.data.loader import make_pair_loader
from clipforge.data.sources import manifest_rows as manifest_mod
from clipforge.data.sources.files import parse_json
from clipforge.errors import ClipforgeError, UsageError
from data_fixtures import encode, pattern

BUDGET = 1536 * 2**20
HERE = Path(__file__).parent
SMALL_CAPS = {"max_image_bytes": 2**20, "max_text_bytes": 2**16}  # so 2 MiB members are "too large", fast


def _by_id(counter) -> dict:
    return {sid: reason for sid, reason in counter.samples}


def _png(seed: int) -> bytes:
    return encode(Image.fromarray(pattern(12, 8, seed=seed)), "PNG")


# --- member caps ----------------------------------------------------------------------------------------------

def test_the_new_reasons_are_listed():
    assert {"member_too_large", "shard_truncated", "not_a_file"} <= set(REASONS)


@pytest.mark.parametrize("gz", [False, True], ids=["tar", "tar.gz"])
def test_big_members_are_refused_from_their_headers(tmp_path, gz):
    path, expect = hf.make_big_member_shard(str(tmp_path), member_bytes=2 * 2**20, gzip=gz)
    src = open_source(f"wds:{path}", **SMALL_CAPS)
    report = check_source(src)
    bad = {k: v for k, v in expect.items() if v}
    assert report["num_ok"] == 4 and report["bad"]["by_reason"] == {"member_too_large": 4}
    assert _by_id(src.skipped) == bad == {"0002": "member_too_large", "0003": "member_too_large",
                                          "0004": "member_too_large", "0007": "member_too_large"}
    samples = {s.id: s for s in open_source(f"wds:{path}", **SMALL_CAPS)}
    assert sorted(samples) == ["0001", "0005", "0006", "0008"]  # 0005's 2 MiB .npy is never read
    assert samples["0006"].captions == ["a good sample between"] and samples["0005"].image.size == (24, 16)
    if not gz:  # the index agrees with a pass, and holds only what can be read
        src = open_source(f"wds:{path}", **SMALL_CAPS)
        assert [src[i].id for i in range(len(src))] == ["0001", "0005", "0006", "0008"]
        assert _by_id(src.open_skipped) == bad


def test_real_sized_members_in_a_sparse_plain_shard(tmp_path):
    """The issue's shard: 1 GiB members in a file of some 40 KB on disk; the default caps refuse them."""
    path, expect = hf.make_big_member_shard(str(tmp_path))
    assert os.path.getsize(path) > 5 * hf.GIB and os.stat(path).st_blocks * 512 < 2**20
    src = open_source(f"wds:{path}")
    assert len(src) == 4  # the headers were scanned, no member read
    report = check_source(src)
    assert _by_id(src.skipped) == {k: v for k, v in expect.items() if v}
    assert report["num_ok"] == sum(v is None for v in expect.values())


def test_a_second_image_and_unknown_members_are_never_read(tmp_path):
    path = hf.write_tar(str(tmp_path / "s.tar"), [
        hf.member("0001.jpg", encode(Image.fromarray(pattern(8, 8, seed=1)), "JPEG")),
        hf.member("0001.png", b"\x89PNG", size=hf.GIB),  # a second image: not the one used
        hf.member("0001.seg.npy", b"", size=hf.GIB),
        hf.member("0001.txt", b"kept"),
        hf.member("0001.txt", b"a repeated name"),  # webdataset's rule: an error, counted, not read
        hf.member("0002.png", _png(2)), hf.member("0002.txt", b"next"),
    ])
    src = open_source(f"wds:{path}")
    got = {s.id: (s.ext, s.captions) for s, _ in src.iter_decoded()}
    assert got == {"0001": ("jpg", ["kept"]), "0002": ("png", ["next"])}
    assert _by_id(src.skipped) == {"0001.txt": "bad_record"}


def test_member_caps_are_checked_and_named():
    for name in ("max_image_bytes", "max_text_bytes", "max_caption_bytes"):
        with pytest.raises(UsageError, match=f"`{name}`"):
            open_source(str(HERE / "nope.tar"), **{name: 0})


def test_a_huge_tar_metadata_header_is_damage_not_a_read(tmp_path):
    shards = hf.make_huge_header_shards(str(tmp_path))
    for case, path in shards.items():
        src = open_source(f"wds:{path}")
        assert [s.id for s in src.iter_decoded()] == [], case
        assert dict(src.skipped) == {"bad_record": 1}, case
        sid = src.skipped.samples[0][0]
        assert sid.startswith(path) and "claims 1073741824 bytes" in sid, sid


# --- non-regular members -----------------------------------------------------------------------------------

@pytest.mark.parametrize("gz", [False, True], ids=["tar", "tar.gz"])
def test_non_regular_members_are_counted_and_never_followed(tmp_path, gz):
    path, expect, n_links = hf.make_nonregular_shard(str(tmp_path), gzip=gz)
    src = open_source(f"wds:{path}")
    read = {s.id: s for s, _ in src.iter_decoded()}
    assert sorted(read) == sorted(expect) == ["d/0001", "d/0007", "d/0008"]
    assert dict(src.skipped) == {"not_a_file": n_links} and n_links == 7
    assert [sid for sid, _ in src.skipped.samples] == [
        "d/0002.png", "d/0003.png", "d/0004.png", "d/0005.png", "d/0006.png", "d/0006u.png", "d/0007.cls"]
    # the link beside 0007's regular members was not followed: no label from /dev/zero, the caption kept
    assert read["d/0007"].label is None and read["d/0007"].captions == ["beside a link"]
    assert read["d/0008"].captions == []


# --- cut shards ------------------------------------------------------------------------------------------------

CUT_CASES = ["header.tar", "data.tar", "boundary.tar", "header.tar.gz", "data.tar.gz", "boundary.tar.gz",
             "gzip_stops"]


@pytest.fixture(scope="module")
def cut_shards(tmp_path_factory):
    return hf.make_cut_shards(str(tmp_path_factory.mktemp("cut")))


@pytest.mark.parametrize("case", CUT_CASES)
def test_a_cut_shard_keeps_every_whole_sample_before_the_cut(cut_shards, case):
    assert sorted(cut_shards) == sorted(CUT_CASES)
    path, ids, reason = cut_shards[case]
    src = open_source(f"wds:{path}")
    got = [s.id for s, _ in src.iter_decoded()]
    if ids is None:  # where a gzip stream stops, in tar terms, depends on the codec: a proper prefix
        assert got == ["0001", "0002", "0003", "0004"][: len(got)] and len(got) < 4
    else:
        assert got == ids
    assert dict(src.skipped) == {reason: 1} and src.skipped.samples[0][0].startswith(path)
    if path.endswith(".tar"):  # indexed access sees the same samples and the same one count
        fresh = open_source(f"wds:{path}")
        assert [fresh[i].id for i in range(len(fresh))] == got and dict(fresh.open_skipped) == {reason: 1}


def test_short_empty_and_damaged_shards(tmp_path, cut_shards):
    full = Path(cut_shards["header.tar"][0]).with_name("full.tar").read_bytes()
    cases = {
        "empty.tar": (b"", "shard_truncated"),
        "half_header.tar": (full[:300], "shard_truncated"),
        "garbage.tar": (b"\x01" * 3000, "bad_record"),
        "bad_crc.tar.gz": (None, "bad_record"),
    }
    packed = bytearray(gzip.compress(full))
    packed[-8] ^= 0xFF  # the CRC-32 in the gzip trailer
    for name, (data, reason) in cases.items():
        p = tmp_path / name
        p.write_bytes(bytes(packed) if data is None else data)
        src = open_source(f"wds:{p}")
        got = [s.id for s, _ in src.iter_decoded()]
        assert dict(src.skipped) == {reason: 1}, (name, src.skipped.samples)
        # the damage is found at the gzip stream's end, after the tar's end blocks were read: all four there
        assert got == (["0001", "0002", "0003", "0004"] if name == "bad_crc.tar.gz" else []), name


def test_a_gzip_compressed_file_named_tar_is_one_counted_problem(tmp_path, cut_shards):
    full = Path(cut_shards["header.tar"][0]).with_name("full.tar").read_bytes()
    p = tmp_path / "really_gz.tar"
    p.write_bytes(gzip.compress(full))
    src = open_source(f"wds:{p}")
    assert len(src) == 0 and dict(src.skipped) == {"bad_record": 1}
    assert "name it .tar.gz" in src.skipped.samples[0][0]


# --- .tar.gz and random access ---------------------------------------------------------------------------------

def test_tar_gz_random_access_is_one_usage_line_and_streaming_works(tmp_path, capsys):
    path, expect = hf.make_big_member_shard(str(tmp_path), member_bytes=2 * 2**20, gzip=True)
    src = open_source(f"wds:{path}", **SMALL_CAPS)
    for ask in (lambda: len(src), lambda: src[0]):
        with pytest.raises(UsageError) as e:
            ask()
        assert isinstance(e.value, TypeError)  # len() callers that fall back to streaming still do
        msg = str(e.value)
        assert "\n" not in msg and path in msg and "uncompressed .tar" in msg and "--" not in msg
    assert src._len_or_none() is None and not src.random_access
    with pytest.raises(UsageError, match="streaming-only|cannot be read by index"):
        make_pair_loader(src, lambda im: im, lambda caps: caps, batch_size=2)
    assert check_source(src)["num_ok"] == 4  # data check streams it
    assert main(["data", "check", f"wds:{path}", "--json"]) == 0
    capsys.readouterr()
    rc = main(["train", "--out", str(tmp_path / "run"), "--set", f"data.train=wds:{path}", "--set",
               "run.steps=1", "--set", "data.batch_size=2", "--set", "data.workers=0"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "uncompressed .tar" in err and "Traceback" not in err


# --- captions --------------------------------------------------------------------------------------------------

def test_huge_captions_are_cut_in_every_source_kind(tmp_path):
    n = 300_000
    specs = hf.make_huge_caption_sources(str(tmp_path), caption_bytes=n)
    assert sorted(specs) == ["csv", "files", "jsonl", "parquet", "wds"]
    want = "é" + "a" * 4093  # the 3-byte "€" straddling byte 4096 is dropped whole
    assert hf.huge_caption(n).encode()[:4096].decode("utf-8", "ignore") == want
    big_id = {"files": "big.png"}
    for kind, spec in specs.items():
        src = open_source(spec)
        report = check_source(src)
        assert report["num_ok"] == 2 and report["num_bad"] == 0, kind
        sid = big_id.get(kind, "big")
        assert report["notes"] == {"by_reason": {"caption_truncated": 1}, "samples": [[sid, "caption_truncated"]]}, kind
        assert "read but changed: caption_truncated=1" in format_report(report)
        caps = {s.id: s.captions for s in open_source(spec)}
        assert caps == {sid: [want], big_id.get(kind, "ok").replace("big", "ok"): ["short"]}, kind
    # the cap is a parameter: smaller, or off
    src = open_source(specs["jsonl"], max_caption_bytes=10)
    assert {s.id: s.captions for s in src}["big"] == ["é" + "a" * 8]
    src = open_source(specs["wds"], max_caption_bytes=None)
    assert {s.id: s.captions for s in src}["big"] == [hf.huge_caption(n)[: hf.HUGE_CAPTION_CAPS["wds"]]]
    assert dict(src.notes) == {}


def test_manifest_rows_keep_no_huge_caption(tmp_path):
    """Captions are cut as each row is read, in every caption-like column, and a JSON-list cell is parsed
    before it is cut (not cut through its syntax)."""
    (tmp_path / "a.png").write_bytes(_png(1))
    long = "b" * 10_000
    rows = [{"id": "x", "image": "a.png", "caption": json.dumps([long, "second"])},
            {"id": "y", "image": "a.png", "caption": "c" * 9000, "text": "t" * 9000}]
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    src = open_source(str(tmp_path / "m.jsonl"))
    assert [s.captions for s in src] == [["b" * 4096, "second"], ["c" * 4096]]
    assert src.open_notes.samples == [("x", "caption_truncated"), ("y", "caption_truncated")]
    assert src.items[1][4]["text"] == ["t" * 4096]  # the other caption-like column was cut as read
    cells = [json.dumps([long, "second"]), "  " + "d" * 9000, " " * 5000 + "short", "e" * 4096 + " " * 9000]
    pq.write_table(pa.table({"image": ["a.png"] * 4, "id": ["x", "y", "z", "w"], "caption": cells}),
                   tmp_path / "m.parquet")
    src = open_source(str(tmp_path / "m.parquet"))
    assert [s.captions for s in src] == [["b" * 4096, "second"], ["d" * 4096], ["short"], ["e" * 4096]]
    assert src.open_notes.samples == [("x", "caption_truncated"), ("y", "caption_truncated")]
    assert "\x00cut:caption" not in src.items[1][4]


# --- text manifests --------------------------------------------------------------------------------------------

def test_nul_and_invalid_utf8_rows_are_bad_rows_named_by_line(tmp_path):
    made = hf.make_bad_text_manifests(str(tmp_path))
    assert sorted(made) == ["csv", "jsonl", "tsv"]
    for fmt, (path, ids, bad) in made.items():
        src = open_source(f"{fmt}:{path}")
        report = check_source(src)
        assert [s.id for s in open_source(f"{fmt}:{path}")] == ids, fmt
        assert _by_id(src.skipped) == bad, fmt
        assert report["num_ok"] == len(ids), fmt
    caps = {s.id: s.captions for s in open_source(made["csv"][0])}
    assert caps["b"] == ["café \u2028 line separator kept"]


def test_a_line_over_the_cap_is_skipped_unread(tmp_path):
    made = hf.make_long_line_manifests(str(tmp_path))
    for fmt, (path, ids, bad) in made.items():
        assert os.path.getsize(path) > manifest_mod.MAX_LINE_BYTES
        src = open_source(f"{fmt}:{path}")
        assert [s.id for s in src] == ids and _by_id(src.open_skipped) == bad, fmt


def test_a_json_list_manifest_has_a_size_limit(tmp_path, monkeypatch):
    (tmp_path / "a.png").write_bytes(_png(1))
    p = tmp_path / "m.json"
    p.write_text(json.dumps([{"image": "a.png", "caption": "x" * 200}]))
    assert len(open_source(str(p))) == 1
    monkeypatch.setattr(manifest_mod, "MAX_JSON_LIST_BYTES", 100)
    with pytest.raises(ClipforgeError) as e:
        open_source(str(p))
    assert "\n" not in str(e.value) and "JSON Lines" in str(e.value)


def test_numbers_too_long_are_said_about_the_input(tmp_path):
    digits = "7" * 5000
    with pytest.raises(ValueError) as e:
        parse_json(f'{{"label": {digits}}}'.encode())
    assert "more than" in str(e.value) and "digits" in str(e.value) and "sys" not in str(e.value)
    # a tar .json / .cls member and a files-folder sidecar: the sample is kept, its problem noted
    shard = hf.write_tar(str(tmp_path / "s.tar"), [
        hf.member("0001.png", _png(1)), hf.member("0001.json", f'{{"label": {digits}}}'.encode()),
        hf.member("0002.png", _png(2)), hf.member("0002.cls", digits.encode())])
    got = {s.id: s for s in open_source(f"wds:{shard}")}
    assert got["0001"].label is None and "digits" in got["0001"].meta["meta_error"]
    assert got["0002"].label is None and "not an integer label" in got["0002"].meta["meta_error"]
    files = tmp_path / "files"
    files.mkdir()
    (files / "x.png").write_bytes(_png(3))
    (files / "x.json").write_text(f'{{"label": {digits}}}')
    (s,) = list(open_source(f"files:{files}"))
    assert "digits" in s.meta["meta_error"] and "set_int_max_str_digits" not in s.meta["meta_error"]
    # in a manifest it is a bad row, named by its line
    path, ids, bad = hf.make_bad_text_manifests(str(tmp_path / "m"))["jsonl"]
    assert bad["line 4"] == "bad_record" and _by_id(open_source(path).open_skipped)["line 4"] == "bad_record"


# --- the memory budget, measured in a child ----------------------------------------------------------------------

_CHILD = """
import sys
from clipforge.cli import main
rc = main(sys.argv[1:])
sys.stdout.flush()
with open("/proc/self/status") as f:
    hwm = 1024 * int(next(ln.split()[1] for ln in f if ln.startswith("VmHWM:")))
print("HWM", hwm, file=sys.stderr)
sys.exit(rc)
"""


def _data_check_in_a_child(spec: str) -> tuple[dict, int]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CLIPFORGE_PROGRESS": "0"}
    r = subprocess.run([sys.executable, "-c", _CHILD, "data", "check", spec, "--json"], capture_output=True,
                       text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    hwm = int(r.stderr.strip().splitlines()[-1].split()[1])
    return json.loads(r.stdout), hwm


@pytest.mark.parametrize("gz", [False, True], ids=["tar", "tar.gz"])
def test_data_check_on_gib_members_stays_in_the_memory_budget(tmp_path, gz):
    path, expect = hf.make_big_member_shard(str(tmp_path), gzip=gz)
    if gz:
        assert os.path.getsize(path) < 8 * 2**20  # six 1 GiB members, compressed
    report, hwm = _data_check_in_a_child(f"wds:{path}")
    print(f"data check wds:{os.path.basename(path)}: VmHWM {hwm / 2**20:.0f} MiB")
    assert hwm < BUDGET, hwm / 2**20
    assert report["num_ok"] == sum(v is None for v in expect.values()) == 4
    assert report["bad"]["by_reason"] == {"member_too_large": 4}
    assert {sid: r for sid, r in report["bad"]["samples"]} == {k: v for k, v in expect.items() if v}


def test_the_tar_reader_never_reads_more_than_it_is_asked_for(tmp_path):
    """The gzip bomb at the bottom: ~1 MB that inflates to 1 GiB, read through the shard reader, never yields
    (or holds) more than one read asked for."""
    from clipforge.data.sources.tar_bytes import TarBytes

    path = hf.write_tar(str(tmp_path / "z.tar.gz"), [hf.member("0001.bin", b"", size=hf.GIB)], gzip_level=9)
    with open(path, "rb") as raw:
        stream = TarBytes(raw)
        header = stream.read(512)
        assert tarfile.TarInfo.frombuf(header, "utf-8", "surrogateescape").size == hf.GIB
        for n in (1, 511, 4096, 1 << 20):
            assert len(stream.read(n)) == n
        stream.seek(hf.GIB)  # skipped a MiB at a time
        assert stream.tell() == hf.GIB and not stream.short
