"""Safe YAML: libyaml's C loader/dumper when present, never a loader that builds objects."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

try:  # the C implementations are ~10x faster; both are the *safe* variants
    from yaml import CSafeDumper as _Dumper
    from yaml import CSafeLoader as _Loader
except ImportError:  # pragma: no cover - depends on how PyYAML was built
    from yaml import SafeDumper as _Dumper  # type: ignore[assignment]
    from yaml import SafeLoader as _Loader  # type: ignore[assignment]

#: Sidecars are small; anything bigger is not ours (and may be an attack on the parser).
MAX_YAML_BYTES = 4 * 1024 * 1024


def load_yaml_text(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)


def load_yaml_file(path: Path, max_bytes: int = MAX_YAML_BYTES) -> Any:
    """Parse a YAML file with the safe loader, refusing oversized documents and alias bombs."""
    with open(path, "rb") as handle:
        data = handle.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ValueError(f"YAML file larger than {max_bytes} bytes")
    # Aliases are never written by ckptctl; refusing them defeats "billion laughs" documents.
    if b"*" in data and _has_alias(data):
        raise ValueError("YAML aliases are not allowed")
    return yaml.load(data, Loader=_Loader)


def _has_alias(data: bytes) -> bool:
    return any(isinstance(event, yaml.AliasEvent) for event in yaml.parse(data, Loader=_Loader))


def dump_yaml(data: Any) -> str:
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=100)
