"""Which shards a `wds:` pattern names, and opening a remote or `pipe:` one."""
from __future__ import annotations

import os

from clipforge.data.sources.trust import check_commands
from clipforge.errors import ClipforgeError


def expand_shards(pattern: str) -> list[str]:
    """`DIR` -> its *.tar files; otherwise '::'-separated brace patterns, expanded in order."""
    if os.path.isdir(pattern):
        names = sorted(n for n in os.listdir(pattern) if n.endswith((".tar", ".tar.gz", ".tgz")))
        if not names:
            raise ClipforgeError(f"folder {pattern!r} has no .tar shards")
        return [os.path.join(pattern, n) for n in names]
    from webdataset.shardlists import expand_urls

    urls = expand_urls(pattern)
    if not urls:
        raise ClipforgeError(f"shard pattern {pattern!r} names no shards")
    return urls


def is_local(url: str) -> bool:
    return "://" not in url and not url.startswith("pipe:")


def open_remote(url: str, stored_spec=None):
    """A remote or `pipe:` shard, open for reading. `stored_spec`: the stored spec it came from, if any (its
    commands are refused here too, where the command would start)."""
    import webdataset

    check_commands([url], stored_spec)

    try:
        return webdataset.gopen(url, "rb")
    except Exception as e:  # noqa: BLE001 - gopen raises what its transport raises
        raise OSError(str(e)) from None
