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


def _curl_lines(text: str) -> list[list[str]]:
    """The README's HTTP block as argv lists: its `curl` commands, continuation lines joined."""
    import shlex

    section = text.split("## The HTTP API", 1)[1]
    block = re.findall(r"```bash\n(.*?)```", section, re.S)[0].replace("\\\n", " ")
    return [shlex.split(line.split("#")[0] if line.startswith("clipforge") else line)
            for line in block.splitlines() if line.strip().startswith("curl ")]


def _request(argv: list[str], image_b64: str) -> tuple[str, str, dict, str | None]:
    method, headers, body, url = "GET", {}, None, None
    it = iter(argv[1:])
    for a in it:
        if a == "-X":
            method = next(it)
        elif a == "-H":
            k, v = next(it).split(": ", 1)
            headers[k] = v
        elif a == "-d":
            body, method = next(it), "POST" if method == "GET" else method
        elif not a.startswith("-"):
            url = a
    body = body.replace("$(base64 -w0 cat.jpg)", image_b64) if body else None
    return method, url.split("8000", 1)[1], headers, body


def test_http_examples_run_against_the_app(writable_photos_index, rgb_image):
    """Every curl line of the README's HTTP section answers 200 with a key, and 401 without one (but /healthz)."""
    import base64
    import io

    from fastapi.testclient import TestClient

    from clipforge.serve.app import create_app

    buf = io.BytesIO()
    rgb_image.save(buf, "JPEG")
    image_b64 = base64.b64encode(buf.getvalue()).decode()
    lines = _curl_lines(README.read_text())
    assert len(lines) >= 6 and any("DELETE" in x for x in lines) and any("/classify" in " ".join(x) for x in lines)
    with TestClient(create_app(writable_photos_index, api_key="s3cret", reload_interval=None)) as client:
        for argv in lines:
            method, path, headers, body = _request(argv, image_b64)
            r = client.request(method, path, headers=headers, content=body)
            assert r.status_code == 200, (argv, r.text)
            if path == "/search":
                assert "results" in r.json()
            if headers:
                anonymous = {k: v for k, v in headers.items() if k != "X-API-Key"}
                assert client.request(method, path, headers=anonymous, content=body).status_code == 401
