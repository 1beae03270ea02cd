"""`clipforge search` with hostile arguments: each is a one-line error with exit code 2, never a traceback;
query images go through the same safe decoder as indexed ones (pixel bombs refused, EXIF applied)."""
import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from clipforge.cli import main
from data_fixtures import exif_rotated_jpeg


@pytest.fixture(scope="module")
def index_dir(photos_index):
    return str(photos_index)


def header_bomb_png(width: int, height: int) -> bytes:
    """A valid PNG header claiming width x height with a tiny payload (a bomb that costs nothing to make)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 100)) + chunk(b"IEND", b"")


def _one_line_error(capsys, argv, code=2) -> str:
    rc = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == code and len(err) == 1 and "Traceback" not in err[0], (rc, err)
    return err[0]


@pytest.mark.parametrize("args, needle", [
    (["cat", "--filter", "path~[z-a]"], "not a valid glob"),
    (["--like", "99999999999999999999"], "an item id is decimal digits from 0 to 9223372036854775807"),
    (["--like", "999999"], "no item with id 999999"),
    (["--like", "-1"], "an item id is decimal digits"),
    (["cat", "--sheet", "/nonexistent_dir/x.png"], "does not exist"),
    (["cat", "--dedup", "5"], "dedup"),
    (["cat", "--dedup", "-0.5"], "dedup"),
    (["cat", "--filter", "caption*=" + "a" * 100_000], "character limit"),
    (["cat", "--filter", "nonsense"], "expected COLUMN OP VALUE"),
])
def test_bad_arguments_are_one_line_errors(index_dir, capsys, args, needle):
    assert needle in _one_line_error(capsys, ["search", index_dir, *args])


def test_bad_query_images_are_one_line_errors(index_dir, tmp_path, capsys):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(header_bomb_png(40_000, 40_000))
    assert "too_large" in _one_line_error(capsys, ["search", index_dir, "--image", str(bomb)])
    fake = tmp_path / "fake.jpg"
    fake.write_text("not an image")
    assert "not_an_image" in _one_line_error(capsys, ["search", index_dir, "--image", str(fake)])
    assert "missing_file" in _one_line_error(capsys, ["search", index_dir, "--image", str(tmp_path / "no.png")])
    import os

    os.mkfifo(tmp_path / "fifo.png")  # would block an unchecked open
    assert "not_a_file" in _one_line_error(capsys, ["search", index_dir, "--image", str(tmp_path / "fifo.png")])


def test_cli_image_query_applies_exif_like_the_http_path(index_dir, tmp_path):
    """A photo stored sideways with an EXIF orientation tag embeds like the upright photo (the HTTP path always
    applied EXIF; the CLI path skipped it)."""
    from clipforge.retrieval.index_searcher import IndexSearcher

    data, upright = exif_rotated_jpeg()
    (tmp_path / "rotated.jpg").write_bytes(data)
    engine = IndexSearcher(index_dir)
    from_file = engine.query_vector(image=str(tmp_path / "rotated.jpg"))
    from_pixels = engine.query_vector(image=Image.open(io.BytesIO(data)).transpose(Image.Transpose.ROTATE_270))
    raw = engine.query_vector(image=Image.open(io.BytesIO(data)))  # the sideways pixels, EXIF ignored
    assert upright.shape[:2] == (40, 20)
    assert float(from_file @ from_pixels) > 0.999
    assert float(from_file @ raw) < float(from_file @ from_pixels)


def test_dedup_bounds_in_the_library(index_dir):
    from clipforge.errors import UsageError
    from clipforge.retrieval.index_searcher import IndexSearcher

    engine = IndexSearcher(index_dir)
    hits = engine.search("a photo", k=5, dedup=1.0)  # the bounds themselves are allowed
    assert len(hits) == 5
    with pytest.raises(UsageError, match="dedup"):
        engine.search("a photo", k=5, dedup=1.5)
    ids = np.array([h.id for h in hits])
    assert (engine.searcher.vectors_of(ids).shape[0] == 5)
