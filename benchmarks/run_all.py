#!/usr/bin/env python
"""Run every ckptctl benchmark and print a markdown report (``make bench``).

Catalog over 10,000 sidecars, convert of a ~1.1 GB state dict, then convert of two ~560 MB
TF-index checkpoints (Keras 2 ``save_weights``; Keras 3 in a ``tf.train.CheckpointManager``)
against a TensorFlow-based conversion, ``scan`` of a 1 GB ``.ckpt`` against
``torch.load(mmap=True)``, and 1,000 small Lightning checkpoints against a naive loop; each
against baselines measured in the same run. Takes about 10 minutes on 2 cores, needs about
4.6 GB of free disk under
``benchmarks/_work/`` (deleted at the end, also on failure).

Exit status: 0 when every target is met, 1 when one is missed (the figures are printed either
way), 2 when a benchmark could not run.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import bench_catalog
import bench_convert
import bench_many
import bench_scan
import bench_tf_convert
from _common import WORK, markdown_table, verdict

NEEDED_DISK_BYTES = int(4.8e9)  # source, copy, weights and its replacement


def machine() -> str:
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (f"{os.cpu_count()} cores ({cpu}), {memory:.0f} GiB RAM, {platform.system()} "
            f"{platform.release()}, Python {platform.python_version()}")


def summary(catalog: dict[str, Any], convert: dict[str, Any], tf_convert: dict[str, Any],
            scan: dict[str, Any], many: dict[str, Any]) -> str:
    warm = catalog["median_seconds"]["warm"]
    ratios = convert["ratio_convert_vs"]
    rows = [
        [f"warm `catalog` of {catalog['sidecars']} sidecars", "< 1 s", f"{warm:.3f} s "
         f"({catalog['ms_per_sidecar']['warm']:.3f} ms/sidecar, "
         f"{catalog['ratio_vs_naive']['warm']:.2f} x naive YAML)",
         verdict(catalog["warm_target_met"])],
        ["cold `catalog` (information)", "-", f"{catalog['median_seconds']['cold']:.3f} s "
         f"({catalog['ms_per_sidecar']['cold']:.3f} ms/sidecar, "
         f"{catalog['ratio_vs_naive']['cold']:.2f} x naive YAML)", "-"],
        ["`convert` of the 1.1 GB state dict: throughput / (`cp` + `sync FILE`)", ">= 0.75",
         f"{ratios['cp_fsync']:.2f} ({convert['throughput_mb_s']['convert']:.0f} vs "
         f"{convert['throughput_mb_s']['cp_fsync']:.0f} MB/s)",
         verdict(convert["cp_fsync_target_met"])],
        ["`convert` throughput / `cp`, / `shutil.copyfile`, / user-space copy (information)",
         "-", f"{ratios['cp']:.2f}, {ratios['shutil']:.2f}, {ratios['copy_loop']:.2f}", "-"],
        ["`convert` peak RSS", "<= 128 MiB",
         f"{convert['convert_max_rss_worst_mib']:.0f} MiB (worst run)",
         verdict(convert["rss_128_target_met"])],
        *bench_tf_convert.summary_rows(tf_convert),
        ["`scan --format json` of a 1 GB `.ckpt` vs `torch.load(mmap=True)`, whole processes",
         ">= 16 x faster", f"{scan['speedup']:.1f} x (paired {scan['speedup_paired']:.1f} x)",
         verdict(bench_scan.target_met(scan))],
        [f"{many['checkpoints']} small checkpoints: `convert --jobs 1` / naive loop", "<= 1.0",
         f"{many['jobs1_over_naive']:.2f} (paired {many['jobs1_over_naive_paired']:.2f})",
         verdict(many["jobs1_over_naive"] <= 1.0)],
        [f"{many['checkpoints']} small checkpoints: `--jobs 1` / `--jobs 2`, 2 cores", ">= 1.7",
         f"{many['jobs2_speedup']:.2f} (paired {many['jobs2_speedup_paired']:.2f})",
         verdict(many["jobs2_speedup"] >= 1.7)],
    ]
    return markdown_table(["target", "wanted", "measured (median)", "verdict"], rows)


def all_met(catalog: dict[str, Any], convert: dict[str, Any], tf_convert: dict[str, Any],
            scan: dict[str, Any], many: dict[str, Any]) -> bool:
    return bool(catalog["warm_target_met"] and convert["cp_fsync_target_met"]
                and convert["rss_128_target_met"] and tf_convert["all_met"]
                and bench_scan.target_met(scan) and many["jobs1_over_naive"] <= 1.0
                and many["jobs2_speedup"] >= 1.7)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="timed runs of each (median)")
    parser.add_argument("--json", type=Path, help="also write every figure to this file")
    args = parser.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(WORK).free
    if free < NEEDED_DISK_BYTES:
        print(f"need {NEEDED_DISK_BYTES / 1e9:.1f} GB free under {WORK}, have {free / 1e9:.1f}",
              file=sys.stderr)
        return 2
    started = time.perf_counter()
    load_before = os.getloadavg()
    try:
        catalog = bench_catalog.run(repeat=args.repeat)
        convert = bench_convert.run(repeat=args.repeat)
        tf_convert = bench_tf_convert.run(repeat=args.repeat)
        scan = bench_scan.run(repeat=args.repeat, gib=1.0, keep=False)
        many = bench_many.run(repeat=min(args.repeat, 3), experiments=50, per_exp=20, keep=False)
    finally:
        shutil.rmtree(WORK, ignore_errors=True)
    elapsed = time.perf_counter() - started
    load = ", ".join(f"{a:.1f} -> {b:.1f}"
                     for a, b in zip(load_before, os.getloadavg(), strict=True))
    print(f"### ckptctl benchmarks, {dt.date.today().isoformat()}\n")
    print(f"Machine: {machine()}. Load average (1, 5, 15 min) at start -> end: {load}. "
          f"Total run time {elapsed:.0f} s.\n")
    print(summary(catalog, convert, tf_convert, scan, many))
    print("\n#### catalog\n")
    print(bench_catalog.report(catalog))
    print("\n#### convert\n")
    print(bench_convert.report(convert))
    print("\n#### TF convert\n")
    print(bench_tf_convert.report(tf_convert))
    print("\n#### scan\n")
    print(bench_scan.report(scan))
    print("\n#### many small checkpoints\n")
    print(bench_many.report(many))
    if args.json:
        args.json.write_text(json.dumps({"catalog": catalog, "convert": convert,
                                         "tf_convert": tf_convert, "scan": scan, "many": many},
                                        indent=2) + "\n")
    return 0 if all_met(catalog, convert, tf_convert, scan, many) else 1


if __name__ == "__main__":
    sys.exit(main())
