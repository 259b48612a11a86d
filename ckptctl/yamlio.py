"""Safe YAML: libyaml's C loader/dumper when present, never a loader that builds objects."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from .budgets import MAX_FLOW_NESTING, flow_nesting_exceeds
from .safeio import open_regular

# libyaml's C safe loader is ~10x faster than PyYAML's; both build plain data only
# (dicts, lists, str, numbers): never Python objects, never code.
SafeLoader: type = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
SafeDumper: type = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
# Refuse to run with anything but the safe constructor, whatever the build of PyYAML.
if not issubclass(SafeLoader, yaml.constructor.SafeConstructor) or issubclass(
        SafeLoader, yaml.constructor.FullConstructor):
    raise ImportError("PyYAML's safe loader is not available")

#: Sidecars are small; anything bigger is not ours (and may be an attack on the parser).
MAX_YAML_BYTES = 4 * 1024 * 1024


def load_yaml_file(path: Path, max_bytes: int = MAX_YAML_BYTES) -> Any:
    """Parse a YAML file with the safe loader, refusing oversized documents and alias bombs."""
    with open_regular(path, "rb") as handle:
        data = handle.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ValueError(f"YAML file larger than {max_bytes} bytes")
    # libyaml's parser recurses once per bracket and crashes the process past ~20,000
    if flow_nesting_exceeds(data):
        raise ValueError(f"YAML nested deeper than {MAX_FLOW_NESTING} levels")
    # Aliases are never written by ckptctl; refusing them defeats "billion laughs" documents.
    if b"*" in data and _has_alias(data):
        raise ValueError("YAML aliases are not allowed")
    return yaml.load(data, Loader=SafeLoader)


def _has_alias(data: bytes) -> bool:
    # Parsing emits events only: nothing is constructed.
    return any(isinstance(event, yaml.AliasEvent) for event in yaml.parse(data, Loader=SafeLoader))


def dump_yaml(data: Any) -> str:
    return yaml.dump(data, Dumper=SafeDumper, sort_keys=False, allow_unicode=True, width=100)
