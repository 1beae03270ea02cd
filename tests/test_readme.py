"""The README's examples run as written."""
from __future__ import annotations

import re
from pathlib import Path

from clipforge.data.sources import open_source
from clipforge.data.write import convert
from data_fixtures import make_pair_folder

README = Path(__file__).parents[1] / "README.md"


def test_python_example_runs(tmp_path, monkeypatch, rgb_image):
    block = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)[0]
    rgb_image.save(tmp_path / "cat.jpg")  # the example's photo
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(block, "README.md", "exec"), scope)  # noqa: S102 - our own documentation
    assert scope["img"].shape == (1, 64) and scope["txt"].shape == (2, 64)
    assert scope["out"].image_embeds.shape == (1, 64) and (tmp_path / "my-model" / "model.safetensors").is_file()


def test_webdataset_pattern_matches_what_convert_writes(tmp_path):
    rows = make_pair_folder(str(tmp_path / "pairs"), n=5)
    convert(open_source(f"files:{tmp_path / 'pairs'}"), "wds", str(tmp_path / "shards"), shard_size=2)
    pattern = re.search(r"`wds:DIR/(shard-\{[0-9.]+\}\.tar)`", README.read_text()).group(1)
    src = open_source(f"wds:{tmp_path / 'shards'}/" + pattern.replace("000009", "000002"))
    assert sorted(s.id for s in src) == sorted(r["id"] for r in rows)
