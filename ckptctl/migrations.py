"""Sidecar schema versions and the upgrades between them, applied whenever a sidecar is read.

A sidecar records the ``schema_version`` it was written with. Reading one from an older
ckptctl runs the chain of migrations below (``MIGRATIONS[v]`` turns a version-``v`` document
into the next version's), so old trees keep working after a schema change; one from a newer
ckptctl is refused with both versions named, never misread or overwritten. Light: plain
dicts only (catalog uses it without pydantic).

Adding a version: bump ``SCHEMA_VERSION`` (and ``schema.Sidecar.schema_version``), register
``MIGRATIONS[old] = (new, upgrade)``, and add a test that reads a literal old document.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, Final

from .errors import NewerSidecarError, SidecarError

SCHEMA_VERSION: Final = "1.0"

Document = dict[str, Any]
Migration = Callable[[Document], Document]

#: version -> (the next version, upgrade of a document from the first to the second)
MIGRATIONS: dict[str, tuple[str, Migration]] = {}

_VERSION = re.compile(r"^(\d{1,4})\.(\d{1,4})$")


def parse_version(text: object) -> tuple[int, int] | None:
    match = _VERSION.match(text) if isinstance(text, str) else None
    return (int(match.group(1)), int(match.group(2))) if match else None


def upgrade(doc: Document, path: object | None = None) -> Document:
    """``doc`` at ``SCHEMA_VERSION``: unchanged when current, migrated when older."""
    version = doc.get("schema_version")
    parsed = parse_version(version)
    if parsed is None:
        raise SidecarError(f"schema_version {version!r} is not a version like {SCHEMA_VERSION!r}", path)
    current = parse_version(SCHEMA_VERSION)
    assert current is not None
    if parsed > current:
        raise NewerSidecarError(str(version), SCHEMA_VERSION, path)
    steps = 0
    while version != SCHEMA_VERSION:
        step = MIGRATIONS.get(str(version))
        if step is None or steps > len(MIGRATIONS):
            raise SidecarError(f"unknown sidecar schema {version} (this ckptctl reads up to "
                               f"{SCHEMA_VERSION})", path)
        version, migrate = step
        doc = migrate(dict(doc))
        doc["schema_version"] = version
        steps += 1
    return doc
