"""Which logged metric names mean the metric a user asked for (``catalog --best``).

The alias rule (README: Catalog), applied to the asked name and to every logged name:

* the separators ``/``, ``_`` and ``.`` are equivalent (``val/loss`` = ``val_loss`` =
  ``val.loss``); repeated or leading/trailing separators do not count;
* a first part ``val``, ``valid`` or ``validation`` is the same prefix (``validation.loss``
  = ``val_loss``); so is that prefix glued to a word of three or more letters, as file
  names write it (``valloss`` = ``val_loss``, ``validacc`` = ``val_acc``);
* everything else must be equal, case included. A group name is part of the metric:
  ``val_stats/loss`` is *not* ``val_loss`` (it may be another statistic), nor is
  ``best_val_loss``.

Among the names one sidecar logged, the asked spelling wins when present; otherwise the one
name that matches; otherwise a spelled-out name (``val/loss``) wins over a glued file-name
form (``valloss``) when only one is spelled out; anything else is ambiguous and reported.
Pure string work: no imports beyond the standard library (``catalog`` stays light).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable

_SEPARATORS = re.compile(r"[/_.]+")
_PREFIXES = ("validation", "valid", "val")  # longest first
_GLUED = re.compile(r"^(validation|valid|val)([a-z]{3,})$")


def metric_key(name: str) -> tuple[str, ...]:
    """The form two names share exactly when the alias rule makes them the same metric."""
    parts = [part for part in _SEPARATORS.split(name) if part]
    if not parts:
        return (name,)
    if parts[0] in _PREFIXES:
        parts[0] = "val"
    elif len(parts) == 1:
        glued = _GLUED.match(parts[0])
        if glued:
            parts = ["val", glued.group(2)]
    return tuple(parts)


def is_glued(name: str) -> bool:
    """``valloss``: a prefix glued to its word, as only file names write metrics."""
    return _SEPARATORS.search(name) is None and metric_key(name) != (name,)


class AmbiguousMetric(Exception):
    def __init__(self, asked: str, names: list[str]) -> None:
        super().__init__(asked, names)
        self.asked = asked
        self.names = names


def resolve(asked: str, logged: Iterable[str]) -> str | None:
    """The logged name that ``asked`` means, None when none does; raises ``AmbiguousMetric``
    when two logged names match and neither the rule's preferences decide."""
    names = list(logged)
    if asked in names:
        return asked
    key = metric_key(asked)
    matches = sorted(name for name in names if metric_key(name) == key)
    if len(matches) <= 1:
        return matches[0] if matches else None
    spelled = [name for name in matches if not is_glued(name)]
    if len(spelled) == 1:
        return spelled[0]
    raise AmbiguousMetric(asked, matches)


def did_you_mean(asked: str, known: Iterable[str], count: int = 3) -> list[str]:
    """The closest known names (difflib), for an unknown metric's error."""
    names = sorted(set(known))
    return difflib.get_close_matches(asked, names, n=count, cutoff=0.6)
