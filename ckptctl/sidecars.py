"""Reading, writing and checking sidecars; shared by convert, scan, validate and catalog.

Every read goes through ``migrations.upgrade``: a sidecar from an older ckptctl is upgraded
in memory, one from a newer ckptctl is refused naming both versions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError

from .errors import SidecarError
from .migrations import SCHEMA_VERSION, upgrade
from .schema import Sidecar
from .sources import fingerprint, sha256_files
from .yamlio import dump_yaml, load_yaml_file


def sha256_file(path: Path) -> str:
    return sha256_files([path])


def read_sidecar_raw(path: Path) -> dict[str, Any]:
    try:
        data = load_yaml_file(path)
    except OSError as exc:
        raise SidecarError(f"cannot read ({exc.strerror})", path) from exc
    except Exception as exc:
        raise SidecarError(f"not valid YAML ({str(exc).splitlines()[0]})", path) from exc
    if not isinstance(data, dict):
        raise SidecarError("not a YAML mapping", path)
    return data


def read_sidecar_doc(path: Path) -> dict[str, Any]:
    """The sidecar as plain data at the current schema version (not yet validated)."""
    return upgrade(read_sidecar_raw(path), path)


def parse_sidecar(path: Path, data: dict[str, Any] | None = None) -> Sidecar:
    """The validated sidecar; ``data`` is a document already read (and upgraded)."""
    data = read_sidecar_doc(path) if data is None else data
    try:
        return Sidecar.model_validate(data)
    except ValidationError as exc:
        raise SidecarError(describe_validation_error(exc), path) from exc


def describe_validation_error(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors()[:5]:
        where = ".".join(str(p) for p in error["loc"]) or "(document)"
        if error["type"] == "extra_forbidden":
            parts.append(f"unknown field {where}")
        elif error["type"] == "missing":
            parts.append(f"missing field {where}")
        else:
            parts.append(f"{where}: {error['msg']}")
    more = len(exc.errors()) - 5
    return "schema: " + "; ".join(parts) + (f" (+{more} more)" if more > 0 else "")


def sidecar_yaml(sidecar: Sidecar) -> bytes:
    header = f"# ckptctl sidecar (schema {SCHEMA_VERSION}): metadata of the checkpoint named below.\n"
    # Unknown values are left out (smaller files, faster catalogs); weights_path stays
    # explicit because null there means "metadata only".
    doc = sidecar.model_dump(mode="json", exclude_none=True)
    if "weights_path" not in doc:
        doc = {**{k: doc[k] for k in ("schema_version", "checkpoint_path") if k in doc},
               "weights_path": None, **doc}
    return (header + dump_yaml(doc)).encode("utf-8")


def source_is_stale(sidecar: Sidecar, source: Path) -> str | None:
    """Why ``source`` no longer matches its sidecar (size/mtime), or None when it matches."""
    try:
        info = fingerprint(source, sidecar.source.format)
    except OSError:
        return "source file is missing"
    if info.size_bytes != sidecar.source.size_bytes:
        return f"source size changed ({sidecar.source.size_bytes} -> {info.size_bytes} bytes)"
    if abs(info.mtime - sidecar.source.mtime) > 1e-3:
        return "source modified since conversion"
    return None
