#!/usr/bin/env python
"""Benchmark ``ckptctl scan`` of one ~1 GB Lightning-shaped ``.ckpt``: what it is, without loading it.

A child process writes ``model.ckpt`` with ``torch.save`` (``--gib`` GiB of float32 tensors
in ``state_dict``, plus ``epoch``, ``global_step``, ``hyper_parameters`` and a
ModelCheckpoint callback state, as Lightning writes them). Timed per round, after one
untimed warm-up round, each as a whole process (start-up and imports included):

* ``python -c pass`` (information: the interpreter's start-up);
* **the baseline**: ``torch.load(path, mmap=True, weights_only=True)["epoch"]``, the cheapest
  way torch offers to learn a checkpoint's epoch (``mmap`` avoids reading the tensors);
* ``ckptctl scan --format json model.ckpt`` (its answer is checked: ``torch-zip``, not
  converted, the file's size).

Target: ``scan`` at least 16x faster than the baseline.

Run: ``python benchmarks/bench_scan.py [--repeat 5 --gib 1.0 --keep]``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from _common import (
    PYTHON,
    WORK,
    Series,
    ckptctl_exe,
    fresh_dir,
    log,
    markdown_table,
    remove_work,
    run_process,
    verdict,
)

TARGET_SPEEDUP = 16.0

WRITE = r"""
import sys, torch
path, gib = sys.argv[1], float(sys.argv[2])
torch.manual_seed(0)
rows = max(1, int(gib * 2**30 / (8 * 8192 * 4)))
state = {f"blocks.{i}.weight": torch.randn(rows, 8192) for i in range(8)}
torch.save({"state_dict": state, "epoch": 7, "global_step": 7000,
            "pytorch-lightning_version": "2.4.0", "hyper_parameters": {"lr": 1e-3, "width": 8192},
            "callbacks": {"ModelCheckpoint{'monitor': 'val_loss', 'mode': 'min'}": {
                "monitor": "val_loss", "best_model_score": torch.tensor(0.25)}},
            "optimizer_states": [], "lr_schedulers": []}, path)
"""

TORCH_EPOCH = ("import sys, torch; "
               "print(torch.load(sys.argv[1], mmap=True, weights_only=True)['epoch'])")


def run(repeat: int, gib: float, keep: bool) -> dict[str, Any]:
    work = fresh_dir(WORK / "scan")
    try:
        path = work / "model.ckpt"
        log(f"writing a {gib:g} GiB checkpoint ...")
        subprocess.run([PYTHON, "-c", WRITE, str(path), str(gib)], check=True)
        size = path.stat().st_size
        answer = work / "scan.json"
        commands = {
            "python -c pass (start-up)": [PYTHON, "-c", "pass"],
            "torch.load(mmap=True, weights_only=True)['epoch']": [PYTHON, "-c", TORCH_EPOCH,
                                                                   str(path)],
            "ckptctl scan --format json": [ckptctl_exe(), "scan", "--format", "json", str(path)],
        }
        series = {name: Series(name) for name in commands}
        for round_ in range(repeat + 1):
            for name, command in commands.items():
                with answer.open("wb") as out:
                    measured = run_process(command, stdout=out)
                if round_:  # round 0 warms the page cache and the bytecode cache
                    series[name].runs.append(measured)
            rows = json.loads(answer.read_text())  # the last command: scan
            if [(r["format"], r["status"], r["size_bytes"]) for r in rows] != [
                    ("torch-zip", "not converted", size)]:
                raise RuntimeError(f"scan answered {rows}")
            log(f"round {round_}/{repeat} done")
        _, torch_load, scan = series.values()
        return {
            "bytes": size,
            "seconds": {n: s.seconds for n, s in series.items()},
            "all_seconds": {n: s.all_seconds for n, s in series.items()},
            "peak_rss_mib": {n: s.max_rss_bytes / 2**20 for n, s in series.items()},
            "speedup": torch_load.seconds / scan.seconds,
            "speedup_paired": 1 / scan.paired_ratio(torch_load),
        }
    finally:
        if not keep:
            remove_work(work)


def report(result: dict[str, Any]) -> str:
    rows = [[name, f"{seconds * 1000:.0f} ms", f"{result['peak_rss_mib'][name]:.0f} MiB"]
            for name, seconds in result["seconds"].items()]
    ok = result["speedup"] >= TARGET_SPEEDUP
    return "\n".join([
        f"### scan of one {result['bytes'] / 1e9:.2f} GB `.ckpt`", "",
        markdown_table(["process", "median wall", "peak RSS"], rows), "",
        f"* `scan` is **{result['speedup']:.1f}x** faster than `torch.load(mmap=True)` (paired "
        f"{result['speedup_paired']:.1f}x); target >= {TARGET_SPEEDUP:g}x: {verdict(ok)}", ""])


def target_met(result: dict[str, Any]) -> bool:
    return bool(result["speedup"] >= TARGET_SPEEDUP)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--gib", type=float, default=1.0)
    parser.add_argument("--keep", action="store_true", help="keep benchmarks/_work/scan")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    result = run(args.repeat, args.gib, args.keep)
    print(report(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if target_met(result) else 1


if __name__ == "__main__":
    sys.exit(main())
