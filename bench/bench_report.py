"""The older home of `publish` (print a page, write it atomically): it lives in bench/common.py now, with the rest
of the bench convention; this name stays for the scripts that still import it from here."""
from __future__ import annotations

from common import publish  # noqa: F401
