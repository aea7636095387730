"""Loading the user's weights file into their model: the common checkpoint layouts, and errors that say what to do.

Recognised: a plain state dict; a dict holding it under a usual key ('state_dict', 'model_state_dict', 'model',
'net', 'weights', 'params', 'ema', 'model_ema', 'state'), as training scripts and Lightning write them; keys
prefixed by DataParallel / DistributedDataParallel ('module.') or torch.compile ('_orig_mod.'). A whole pickled
model (``torch.save(model)``) is only unpickled with an explicit opt-in, because unpickling runs code.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError

#: where training scripts put the state dict inside a checkpoint dict, in the order tried
STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model", "net", "weights", "params", "ema", "model_ema",
                   "state")
#: key prefixes added by wrappers: DataParallel / DDP, torch.compile
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
TRUST_HINT = "--trust-pickle (Python: trust_pickle=True)"


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def find_state_dict(obj: Any, path: Path, ref: str = "the model") -> tuple[dict[str, torch.Tensor], str]:
    """The state dict inside a loaded checkpoint and where it was found ('' for the top level)."""
    if isinstance(obj, nn.Module):
        return obj.state_dict(), "a pickled model"
    if _is_state_dict(obj):
        return dict(obj), ""
    if isinstance(obj, Mapping):
        for key in STATE_DICT_KEYS:
            inner = obj.get(key)
            if isinstance(inner, nn.Module):
                return inner.state_dict(), f"key '{key}' (a pickled model)"
            if _is_state_dict(inner):
                return dict(inner), f"key '{key}'"
        keys = ", ".join(repr(k) for k in list(obj)[:8])
        raise CheckpointError(f"cannot load weights {path} into {ref}: a dict without a state dict (keys {keys}): "
                              "save model.state_dict(), "
                              f"or a dict with it under one of {', '.join(STATE_DICT_KEYS)}")
    raise CheckpointError(f"cannot load weights {path} into {ref}: it holds a {type(obj).__name__}, not a state "
                          "dict: save model.state_dict()")


def _strip_wrappers(state: dict[str, torch.Tensor], expected: set[str]) -> tuple[dict[str, torch.Tensor], list[str]]:
    stripped = []
    changed = True
    while changed:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            if state and all(k.startswith(prefix) for k in state) and not expected <= set(state):
                state = {k[len(prefix):]: v for k, v in state.items()}
                stripped.append(prefix)
                changed = True
    return state, stripped


def _names(keys: list[str], limit: int = 4) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


def _mismatch_message(state: dict[str, torch.Tensor], model: nn.Module, path: Path, ref: str, where: str) -> str | None:
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}" for k, v in own.items()
              if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if not (missing or unexpected or shapes):
        return None
    parts = []
    if missing:
        parts.append(f"{len(missing)} key(s) of the model missing from the file ({_names(missing)})")
    if unexpected:
        parts.append(f"{len(unexpected)} key(s) in the file the model does not have ({_names(unexpected)})")
    if shapes:
        parts.append(f"{len(shapes)} shape mismatch(es) ({_names(shapes, 2)})")
    hint = f"check that {ref} builds the architecture the weights were trained for"
    if unexpected and missing:
        common = _common_prefix(unexpected)
        if common and all(k.startswith(common) and k[len(common):] in own for k in unexpected):
            hint = f"the file's keys carry the prefix '{common}': save the inner model's state_dict()"
    where_text = f" (state dict under {where})" if where else ""
    return (f"cannot load weights {path}{where_text} into {ref}: " + "; ".join(parts) + f": {hint}")


def _common_prefix(keys: list[str]) -> str:
    first = keys[0].split(".")[0] + "."
    return first if all(k.startswith(first) for k in keys) else ""


def load_weights(model: nn.Module, path: str | Path, *, ref: str = "the model", trust_pickle: bool = False) -> dict:
    """Load a weights file into ``model`` (strictly: every key, every shape); returns what was recognised."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no such weights file: {path} (check the --weights path)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=not trust_pickle)
    except Exception as exc:  # noqa: BLE001 - torch raises many types; say which case this is
        text = str(exc)
        culprit = re.search(r"GLOBAL ([\w.]+)", text)
        if not trust_pickle and culprit is not None:
            raise CheckpointError(
                f"cannot load weights {path} into {ref}: not a plain state dict (it pickles the Python object "
                f"{culprit.group(1)}); oodgate loads weights with "
                f"weights_only=True because unpickling a file runs its code; save model.state_dict() instead, or, "
                f"if you trust this file, pass {TRUST_HINT}") from None
        first = next((line.strip() for line in text.splitlines() if line.strip()), type(exc).__name__)
        raise CheckpointError(f"cannot load weights {path} into {ref}: unreadable ({first}; expected a file written "
                              "by torch.save)") from None
    state, where = find_state_dict(obj, path, ref)
    state, stripped = _strip_wrappers(state, set(model.state_dict()))
    problem = _mismatch_message(state, model, path, ref, where)
    if problem:
        raise CheckpointError(problem)
    model.load_state_dict(state, strict=True)
    return {"found_at": where or "top level", "stripped_prefixes": stripped, "pickled": trust_pickle}
