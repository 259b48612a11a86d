#!/usr/bin/env python
"""Print the Keras zoo's Markdown table (architecture × form) for the README.

Builds the zoo of ``examples/keras_zoo.py`` (or reuses the build in ``--workdir`` when the
zoo's fingerprint is unchanged, so re-running after a mapping change only converts and
checks), converts a copy with ckptctl, and judges every saved form exactly as
``tests/test_keras_zoo.py`` does: ``keras3 ✓`` (loads into Keras 3 and equals the source
bit for bit), ``fallback: <reason>``, ``FAILED: <error>`` or ``WRONG: <what>``.

    .venv/bin/python tools/keras_zoo_report.py [--workdir DIR] [--rebuild] [--expected]

Exits 1 when any conversion is a WRONG claim, so it can gate a README update.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "examples"))

import keras_zoo  # noqa: E402  (found through the sys.path entry above)


def expected_dict(outcomes: list[keras_zoo.Outcome]) -> str:
    """``EXPECTED`` for tests/test_keras_zoo.py, from what the current code does."""
    lines = ["EXPECTED: dict[str, str] = {"]
    for o in outcomes:
        if o.status == "wrong":  # a wrong claim is never expected: at best an honest fallback
            lines.append(f'    {json.dumps(o.key)}: "fallback",  # now WRONG (claims keras3): '
                         "see test_no_wrong_keras3_claims")
        else:
            lines.append(f"    {json.dumps(o.key)}: {json.dumps(o.status)},")
    lines.append("}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path,
                        default=Path(tempfile.gettempdir()) / "ckptctl-keras-zoo",
                        help="where the zoo is built and converted (default: %(default)s)")
    parser.add_argument("--rebuild", action="store_true", help="build the zoo even if cached")
    parser.add_argument("--jobs", type=int, default=None, help="build processes (default: 2)")
    parser.add_argument("--expected", action="store_true",
                        help="also print the EXPECTED dict for tests/test_keras_zoo.py")
    parser.add_argument("--json", type=Path, help="also write every outcome to this JSON file")
    parser.add_argument("--keep", action="store_true",
                        help="keep the converted copy (WORKDIR/run/converted) for inspection")
    args = parser.parse_args(argv)

    zoo = args.workdir.resolve() / "zoo"
    if args.rebuild:
        zoo.with_name(zoo.name + ".manifest.json").unlink(missing_ok=True)
    started = time.perf_counter()
    manifest = keras_zoo.build_zoo_cached(zoo, args.jobs)
    built = time.perf_counter() - started
    started = time.perf_counter()
    run = keras_zoo.evaluate_zoo(zoo, manifest, args.workdir.resolve() / "run", args.keep)
    outcomes = run.outcomes
    checked = time.perf_counter() - started

    print(keras_zoo.markdown_table(outcomes, manifest))
    print()
    for note in manifest["notes"]:
        print(f"* {note}")
    problems = keras_zoo.twin_problems(manifest)
    for problem in problems:
        print(f"* Keras 2/3 pair differs, not comparable: {problem}")
    versions = ", ".join(f"{k} {v}" for k, v in manifest["versions"].items())
    counts = ", ".join(f"{n} {s}" for s, n in keras_zoo.summary(outcomes).items())
    print(f"* {counts} ({versions})")
    reused = " (reused)" if manifest.get("reused") else ""
    print(f"zoo built in {manifest['build_seconds']} s{reused}; this run: build step "
          f"{built:.1f} s, copy + convert + check {checked:.1f} s {run.timings}", file=sys.stderr)
    if args.expected:
        print()
        print(expected_dict(outcomes))
    if args.json:
        args.json.write_text(json.dumps(
            [{"case": o.case, "form": o.form, "status": o.status, "detail": o.detail,
              "source": o.source} for o in outcomes], indent=1))
    return 1 if any(o.status == "wrong" for o in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
