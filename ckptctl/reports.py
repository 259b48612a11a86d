"""Reports CI systems read, built from a ``validate`` report: JUnit XML (GitLab, Jenkins),
SARIF 2.1.0 (GitHub code scanning) and GitHub Actions workflow commands (annotations).

Pure functions: report data in, one string out; nothing here prints or exits (the CLI
chooses a builder and prints its string through the ``Console``). Paths are shown relative
to ``root`` (the repository root) when they are inside it, with forward slashes.
"""

from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from urllib.parse import quote

from . import __version__
from .ops.validate import Problem, ValidateReport

#: SARIF's JSON schema (2.1.0)
SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
SARIF_VERSION = "2.1.0"
#: the ``uriBaseId`` every location is relative to: the repository root
SRCROOT = "%SRCROOT%"

#: What each problem kind means (the README's table of kinds): SARIF rule descriptions.
KIND_DESCRIPTIONS: dict[str, str] = {
    "unsafe": "The pickle would run code: refused, nothing executed.",
    "ambiguous": "The file can be read two ways; torch.load could unpickle bytes ckptctl never checked.",
    "budget": "Reading it would take more work, memory or output than its size allows.",
    "corrupt": "Broken bytes, or written weights that no longer match their sidecar.",
    "unsupported": "Well-formed, but holds nothing ckptctl can convert (no state dict, TorchScript, ...).",
    "unrecognised": "Named like a checkpoint, but no known format.",
    "conflict": "Two sources would write the same outputs, or a foreign file is in the way.",
    "mismatch": "The weights do not match the model --keras-model builds.",
    "changed": "The source changed while it was being converted.",
    "verify": "Weights read back differently from what was written.",
    "os": "The operating system refused: no space, permission denied, read-only, vanished.",
    "busy": "Another ckptctl process holds the checkpoint's lock.",
    "usage": "An option value that cannot work.",
    "sidecar": "A sidecar cannot be read or does not match the schema.",
    "newer-schema": "A sidecar written by a newer ckptctl.",
    "missing": "A checkpoint or weights file that a sidecar names is missing.",
    "stale": "The checkpoint differs from what its sidecar records (run ckptctl convert).",
    "not-converted": "A checkpoint without a sidecar (run ckptctl convert).",
    "crashed": "The worker process checking it died.",
    "internal": "A bug in ckptctl: please report it.",
}


def _visible(text: str) -> str:
    """``text`` without characters no XML 1.0 document or terminal should carry: control
    characters (other than tab, newline and carriage return, which each format escapes its
    own way) and the undecodable bytes of a file name (surrogate escapes) are written
    ``ls``-style, ``\\x1b``."""
    out = []
    for char in text:
        code = ord(char)
        if 0xDC80 <= code <= 0xDCFF:  # a byte that was not UTF-8 (surrogateescape)
            out.append(f"\\x{code - 0xDC00:02x}")
        elif char in "\t\n\r":
            out.append(char)
        elif code < 0x20 or 0x7F <= code < 0xA0 or 0xD800 <= code <= 0xDFFF or code in (0xFFFE, 0xFFFF):
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
        else:
            out.append(char)
    return "".join(out)


def relative_path(path: str, root: Path, cwd: Path) -> str:
    """``path`` (as ``validate`` reports it: relative to ``cwd`` or absolute) relative to
    ``root``, with forward slashes; absolute when it lies outside ``root``."""
    absolute = Path(os.path.normpath(cwd / path))
    try:
        return PurePosixPath(absolute.relative_to(root)).as_posix()
    except ValueError:
        return PurePosixPath(absolute).as_posix()


def _problems_by_path(report: ValidateReport) -> dict[str, list[Problem]]:
    """Every checked path with its problems, in the order checked (a problem's path that was
    not listed as checked is added at the end)."""
    by_path: dict[str, list[Problem]] = {path: [] for path in report.checked}
    for problem in report.problems:
        by_path.setdefault(problem.path, []).append(problem)
    return by_path


# --- JUnit XML ---------------------------------------------------------------------------------


def junit_report(report: ValidateReport, suite: str = "ckptctl validate") -> str:
    """JUnit XML: one ``<testcase>`` per checked sidecar or checkpoint (``classname`` its
    folder, ``name`` its path), failing with ``<failure message=... type=KIND>`` when it has
    problems (several problems of one file: their messages joined by ``; ``, the kind of the
    first, every one listed in the failure's text)."""
    by_path = _problems_by_path(report)
    failures = sum(1 for problems in by_path.values() if problems)
    counts = {"tests": str(len(by_path)), "failures": str(failures), "errors": "0",
              "skipped": "0"}
    suites = ET.Element("testsuites", {"name": suite, **counts})
    testsuite = ET.SubElement(suites, "testsuite", {"name": suite, **counts})
    for path, problems in by_path.items():
        shown = _visible(path)
        case = ET.SubElement(testsuite, "testcase", {
            "classname": _visible(str(PurePosixPath(Path(path).parent))), "name": shown,
            "file": shown})
        if problems:
            failure = ET.SubElement(case, "failure", {
                "message": _visible("; ".join(p.problem for p in problems)),
                "type": problems[0].kind})
            failure.text = "\n".join(_visible(f"{p.kind}: {p.problem}") for p in problems)
    ET.indent(suites)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(suites, encoding="unicode")


# --- SARIF 2.1.0 -------------------------------------------------------------------------------


def _uri(relative: str) -> str:
    """A URI reference for a POSIX path: percent-encoded bytes (an undecodable name stays
    lossless), ``/`` kept."""
    return quote(os.fsencode(relative), safe="/")


def sarif_report(report: ValidateReport, root: Path, cwd: Path) -> str:
    """SARIF 2.1.0: one run of ``ckptctl``, one rule per problem kind present, one result
    (level ``error``) per problem located at its file relative to ``root`` (``%SRCROOT%``)."""
    kinds = sorted({p.kind for p in report.problems})
    rules = [{"id": kind, "name": kind,
              "shortDescription": {"text": KIND_DESCRIPTIONS.get(kind, kind)},
              "defaultConfiguration": {"level": "error"}} for kind in kinds]
    results = []
    for problem in report.problems:
        relative = relative_path(problem.path, root, cwd)
        location = ({"uri": "file://" + _uri(relative)} if relative.startswith("/")
                    else {"uri": _uri(relative), "uriBaseId": SRCROOT})
        results.append({
            "ruleId": problem.kind, "ruleIndex": kinds.index(problem.kind), "level": "error",
            "message": {"text": _visible(problem.problem)},
            "locations": [{"physicalLocation": {"artifactLocation": location}}],
        })
    root_uri = "file://" + _uri(PurePosixPath(root).as_posix().rstrip("/") + "/")
    document = {
        "$schema": SARIF_SCHEMA,
        "version": SARIF_VERSION,
        "runs": [{
            "tool": {"driver": {"name": "ckptctl", "version": __version__, "rules": rules}},
            "originalUriBaseIds": {SRCROOT: {"uri": root_uri}},
            "results": results,
        }],
    }
    return json.dumps(document, indent=2, ensure_ascii=False)


# --- GitHub Actions workflow commands --------------------------------------------------------


def escape_data(text: str) -> str:
    """A workflow command's message, escaped as GitHub's toolkit does (``%``, CR, LF)."""
    return _visible(text).replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def escape_property(text: str) -> str:
    """A workflow command's property value: ``escape_data`` plus ``:`` and ``,``."""
    return escape_data(text).replace(":", "%3A").replace(",", "%2C")


def github_annotations(report: ValidateReport, root: Path, cwd: Path) -> list[str]:
    """``::error file=PATH,title=ckptctl::MESSAGE``, one per problem, PATH relative to
    ``root`` (the repository root GitHub resolves annotation files against)."""
    return [f"::error file={escape_property(relative_path(p.path, root, cwd))},"
            f"title=ckptctl::{escape_data(p.problem)}" for p in report.problems]


def github_report(report: ValidateReport, summary: str, root: Path, cwd: Path,
                  summary_is_error: bool = False) -> str:
    """The annotations, then ``summary`` on one line (itself an ``::error`` annotation when
    the run fails without a problem to annotate, e.g. ``--strict`` that checked nothing)."""
    last = (f"::error title=ckptctl::{escape_data(summary)}" if summary_is_error
            else _one_line(summary))
    lines: Sequence[str] = [*github_annotations(report, root, cwd), last]
    return "\n".join(lines)


def _one_line(text: str) -> str:
    return _visible(text).replace("\r", "\\r").replace("\n", "\\n")
