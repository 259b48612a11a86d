"""Metadata hidden in checkpoint file names.

Understood styles (examples from real projects):
  Lightning  ``epoch=3-step=16-val_loss=0.40.ckpt``          key=value pairs
  Keras      ``model_03_valloss_0.1234.h5``                   word_number pairs
  glued      ``checkpoint_best_pck_e089_pck0.8123_valloss0.1234.pth``
Only decimal numbers become metrics (``bs2``/``acc4`` are settings, not scores); integers
become ``epoch``/``global_step`` when their name says so.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_NUMBER = r"[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?"
_KEY_VALUE = re.compile(rf"(?:^|[-_ ])([A-Za-z][A-Za-z0-9_/.]*?)=({_NUMBER})(?=$|[-_ ])")
_GLUED = re.compile(rf"^([A-Za-z][A-Za-z]*?)({_NUMBER})$")
_EPOCH_NAMES = frozenset({"epoch", "epochs", "ep", "e"})
_STEP_NAMES = frozenset({"step", "global_step", "steps", "iter", "iteration", "it"})
#: ``ckpt-777`` (CheckpointManager), ``model.ckpt-5`` (TF1 Saver), ``checkpoint-500``: a save
#: counter whose meaning depends on the writer (checkpoint number or step), never an epoch.
_COUNTER_NAMES = frozenset({"ckpt", "checkpoint", "model.ckpt"})


@dataclass
class FilenameTokens:
    epoch: int | None = None
    global_step: int | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    #: decimal places each metric was written with (for "agrees up to rounding" checks)
    decimals: dict[str, int] = field(default_factory=dict)


def _decimals(text: str) -> int:
    mantissa = text.lower().split("e")[0]
    return len(mantissa.split(".")[1]) if "." in mantissa else 0


def _assign(tokens: FilenameTokens, name: str, text: str) -> None:
    lower = name.lower()
    is_integer = re.fullmatch(r"[-+]?\d+", text) is not None
    if lower in _EPOCH_NAMES and is_integer:
        tokens.epoch = int(text)
    elif lower in _STEP_NAMES and is_integer:
        tokens.global_step = int(text)
    elif "." in text and "e" not in text.lower():
        tokens.metrics[name] = float(text)
        tokens.decimals[name] = _decimals(text)


def parse_filename(stem: str) -> FilenameTokens:
    tokens = FilenameTokens()
    if "=" in stem:
        for name, text in _KEY_VALUE.findall(stem):
            _assign(tokens, name, text)
        return tokens
    parts = [p for p in re.split(r"[_\- ]+", stem) if p]
    i = 0
    while i < len(parts):
        part = parts[i]
        following = parts[i + 1] if i + 1 < len(parts) else None
        glued = _GLUED.match(part)
        if part.lower() in _COUNTER_NAMES and following is not None and following.isdigit():
            i += 2
            continue
        if re.fullmatch(r"[A-Za-z]+", part) and following is not None and re.fullmatch(_NUMBER, following):
            if i == 0 and following.isdigit() and part.lower() not in _STEP_NAMES:
                tokens.epoch = int(following)  # model_03_...: Keras' {epoch:02d} after the name
            else:
                _assign(tokens, part, following)  # word_number: valloss_0.1234, epoch_03
            i += 2
            continue
        if glued and not part.isalpha():
            _assign(tokens, glued.group(1), glued.group(2))  # e089, pck0.8123
        elif re.fullmatch(r"\d+", part) and i == 1 and tokens.epoch is None:
            tokens.epoch = int(part)  # model_03_...: Keras' {epoch:02d} right after the name
        i += 1
    return tokens
