"""What every bench script does with its markdown page: print it, and write it atomically where --out says."""
from __future__ import annotations

from typing import Optional


def publish(text: str, out: Optional[str] = None) -> None:
    print(text)
    if out:
        from clipforge.atomic import atomic_write_text

        atomic_write_text(out, text)
