"""Step-level training checkpoints: weights + optimizer + scaler + RNG + data position, atomically.

`RUN/checkpoints/step-00000123/` is a loadable model directory (config.json, model.safetensors, tokenizer)
plus `trainer_state.pt` (an adapter run writes its adapter directory instead, which names the frozen base). It is written to a temporary sibling and renamed, so a directory under its final
name is always complete; `latest_checkpoint` only considers complete ones. The last K are kept.

Resuming (`open_resume`) loads the weights and the trainer state before training starts: with `latest`, a
checkpoint whose files do not load (a bad disk, a copy cut short) is passed over for the next older one, with
a one-line warning; when none loads, or an explicitly named one does not, it is one line, not a traceback.
"""
from __future__ import annotations

import logging
import random
import re
import shutil
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch

from clipforge.errors import ClipforgeError
from clipforge.models.adapter import ADAPTER_WEIGHTS, save_adapter
from clipforge.models.lora import has_lora
from clipforge.models.unwrap import unwrap_model

log = logging.getLogger(__name__)
STATE_FILE = "trainer_state.pt"
_STEP_DIR = re.compile(r"^step-(\d{8})$")


def rng_state() -> dict:
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"key": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(_to_tuple(state["python"]))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_tuple(x):
    return tuple(_to_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


def step_dir(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"step-{step:08d}"


def save_checkpoint(model, run_dir: Path, *, step: int, epoch: int, position: int, optimizer, scaler,
                    config_dict: dict, keep: int) -> Path:
    target = step_dir(run_dir, step)
    trainer_state = {
        "step": step, "epoch": epoch, "position": position,
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "rng": rng_state(), "config": config_dict,
    }

    def extra(tmp: Path) -> None:
        # through a file object: a failed write then surfaces as the OSError (ENOSPC, EROFS) that caused it
        with open(tmp / STATE_FILE, "wb") as f:
            torch.save(trainer_state, f)

    core = unwrap_model(model)
    if has_lora(core):  # an adapter run: the adapter (naming its frozen base) + the trainer state
        save_adapter(core, target, extra=extra)
    else:
        core.save_pretrained(target, extra=extra)
    prune_checkpoints(run_dir, keep)
    return target


def list_checkpoints(run_dir: Path) -> list:
    d = Path(run_dir) / "checkpoints"
    if not d.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in d.iterdir() if (m := _STEP_DIR.match(p.name))]
    return [p for _, p in sorted(found) if (p / STATE_FILE).is_file()
            and ((p / "model.safetensors").is_file() or (p / ADAPTER_WEIGHTS).is_file())]


def latest_checkpoint(run_dir: Path) -> Optional[Path]:
    cks = list_checkpoints(run_dir)
    return cks[-1] if cks else None


def prune_checkpoints(run_dir: Path, keep: int) -> None:
    for p in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(p, ignore_errors=True)


def resolve_resume(resume: str, run_dir: Path) -> Optional[Path]:
    """`latest` (None when the run has no checkpoint yet) or an explicit checkpoint directory."""
    if resume == "latest":
        return latest_checkpoint(run_dir)
    p = Path(resume)
    if not (p / STATE_FILE).is_file():
        raise ClipforgeError(f"`resume` {resume}: not a training checkpoint (no {STATE_FILE})")
    return p


_STATE_KEYS = ("step", "epoch", "position", "optimizer", "rng")


def load_trainer_state(ckpt: Path) -> dict:
    """The trainer state of a checkpoint; a file that does not load, or lacks what resuming needs, is a
    `ClipforgeError` saying why."""
    path = Path(ckpt) / STATE_FILE
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - a damaged file raises any of zip, pickle, EOF and runtime errors
        raise ClipforgeError(f"{path}: cannot read the trainer state ({_reason(e)})") from None
    missing = [k for k in _STATE_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise ClipforgeError(f"{path}: not a complete trainer state (no {', '.join(missing)})")
    return state


def _reason(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= 160 else text[:157] + "..."


def open_resume(resume: str, run_dir: Path,
                load_model: Callable[[Path], Any]) -> tuple[Optional[Path], Any, Optional[dict]]:
    """(checkpoint, model, trainer state) to continue from, or (None, None, None) for `latest` on a run
    with no checkpoint yet. `load_model(path)` loads a checkpoint's weights.

    `latest` takes the newest checkpoint whose weights and state both load, warning once for each damaged one
    passed over; none intact is a `ClipforgeError`. A named checkpoint must load."""
    if resume != "latest":
        ckpt = resolve_resume(resume, run_dir)
        try:
            return ckpt, load_model(ckpt), load_trainer_state(ckpt)
        except Exception as e:  # noqa: BLE001 - damaged weights or state: one line
            raise ClipforgeError(f"`resume` {ckpt}: the checkpoint is damaged ({_reason(e)}); name an intact "
                                 "one, or pass `resume` latest to take the newest that loads") from None
    candidates = list_checkpoints(run_dir)
    damaged = []
    for ckpt in reversed(candidates):
        try:
            state = load_trainer_state(ckpt)
            model = load_model(ckpt)
        except Exception as e:  # noqa: BLE001 - damaged weights or state: try the next older one
            damaged.append(ckpt)
            log.warning("checkpoint %s is damaged (%s): resuming from an older one", ckpt.name, _reason(e))
            continue
        if damaged:
            log.warning("resuming from %s: skipped %d damaged newer checkpoint(s) (%s); they are replaced as "
                        "training passes their steps again", ckpt.name, len(damaged),
                        ", ".join(d.name for d in damaged))
        return ckpt, model, state
    if candidates:
        raise ClipforgeError(f"{Path(run_dir) / 'checkpoints'}: none of its {len(candidates)} checkpoint(s) loads "
                             f"(the newest, {candidates[-1].name}, is damaged); start the run again with "
                             "`overwrite`, or name a copy of a good checkpoint with `resume`")
    return None, None, None
