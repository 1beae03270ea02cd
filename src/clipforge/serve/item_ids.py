"""The `item_id` of a route (/items/{id}, /thumb/{id}): decimal digits within int64, checked by the schema.

int parsing would also take "1_0", "+1", " 1", "１"; the pattern refuses them, and an id past int64, so a
client reading the schema knows the 422 before sending.
"""
from __future__ import annotations

from fastapi import Path as PathParam
from starlette.exceptions import HTTPException

from clipforge.serve.guards import INT64_MAX
from clipforge.serve.patterns import decimal_at_most

__all__ = ["ID_PATTERN", "item_id_param"]

ID_PATTERN = decimal_at_most(INT64_MAX)


async def item_id_param(item_id: str = PathParam(..., pattern=ID_PATTERN, max_length=19,
                                                 description="an item id: decimal digits, 0 to 2**63-1")) -> int:
    """The `item_id` of a route, parsed strictly (async: no thread-pool hop per request)."""
    if not (item_id.isascii() and item_id.isdigit()):  # the pattern again, whatever engine matched it ("1\n")
        raise HTTPException(422, "path.item_id: an item id is decimal digits only")
    value = int(item_id)
    if value > INT64_MAX:
        raise HTTPException(422, f"path.item_id: {item_id} is over the largest item id ({INT64_MAX})")
    return value
