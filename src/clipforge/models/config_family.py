"""Which config class a stored config dict describes: `family` "coca" is a `CoCaConfig`, anything without a
family a `CLIPConfig` (every checkpoint written before CoCa existed)."""
from __future__ import annotations

from typing import Any, Dict

from clipforge.errors import UsageError
from clipforge.models.coca_config import COCA_FAMILY, CoCaConfig
from clipforge.models.config import CLIPConfig

__all__ = ["CONFIG_FAMILIES", "config_from_dict"]

CONFIG_FAMILIES = {"clip": CLIPConfig, COCA_FAMILY: CoCaConfig}


def config_from_dict(d: Dict[str, Any]) -> CLIPConfig:
    """The config a stored dict describes, validated (its class follows `family`, default "clip")."""
    family = d.get("family", "clip") if isinstance(d, dict) else "clip"
    if family not in CONFIG_FAMILIES:
        raise UsageError(f"config.family must be one of {list(CONFIG_FAMILIES)}, got {family!r}")
    if family == "clip" and isinstance(d, dict) and "family" in d:
        d = {k: v for k, v in d.items() if k != "family"}
    return CONFIG_FAMILIES[family].from_dict(d)
