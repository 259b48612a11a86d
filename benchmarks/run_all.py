#!/usr/bin/env python
"""Run every ckptctl benchmark and print a markdown report (``make bench``).

Catalog over 10,000 sidecars, convert of a ~1.1 GB state dict, then convert of two ~560 MB
TF-index checkpoints (Keras 2 ``save_weights``; Keras 3 in a ``tf.train.CheckpointManager``)
against a TensorFlow-based conversion; each against baselines measured in the same run.
Takes about 5 minutes on 2 cores, needs about 4.6 GB of free disk under
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


def summary(catalog: dict[str, Any], convert: dict[str, Any], tf_convert: dict[str, Any]) -> str:
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
        ["`convert` throughput / `shutil.copyfile` throughput", ">= 0.5",
         f"{ratios['shutil']:.2f} ({convert['throughput_mb_s']['convert']:.0f} vs "
         f"{convert['throughput_mb_s']['shutil']:.0f} MB/s)",
         verdict(convert["ratio_target_met"]["shutil"])],
        ["`convert` throughput / `cp` throughput", ">= 0.5",
         f"{ratios['cp']:.2f} ({convert['throughput_mb_s']['convert']:.0f} vs "
         f"{convert['throughput_mb_s']['cp']:.0f} MB/s)",
         verdict(convert["ratio_target_met"]["cp"])],
        ["`convert` / (`cp` + fsync), `convert` / user-space copy (information)", "-",
         f"{ratios['cp_fsync']:.2f}, {ratios['copy_loop']:.2f}", "-"],
        ["`convert` peak RSS", f"<= 2 x {convert['largest_tensor_bytes'] / 2**20:.0f} MiB + "
         f"300 MiB = {convert['rss_limit_mib']:.0f} MiB",
         f"{convert['convert_max_rss_worst_mib']:.0f} MiB (worst run)",
         verdict(convert["rss_target_met"])],
        *bench_tf_convert.summary_rows(tf_convert),
    ]
    return markdown_table(["target", "wanted", "measured (median)", "verdict"], rows)


def all_met(catalog: dict[str, Any], convert: dict[str, Any], tf_convert: dict[str, Any]) -> bool:
    return bool(catalog["warm_target_met"] and all(convert["ratio_target_met"].values())
                and convert["rss_target_met"] and tf_convert["all_met"])


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
    finally:
        shutil.rmtree(WORK, ignore_errors=True)
    elapsed = time.perf_counter() - started
    load = ", ".join(f"{a:.1f} -> {b:.1f}"
                     for a, b in zip(load_before, os.getloadavg(), strict=True))
    print(f"### ckptctl benchmarks, {dt.date.today().isoformat()}\n")
    print(f"Machine: {machine()}. Load average (1, 5, 15 min) at start -> end: {load}. "
          f"Total run time {elapsed:.0f} s.\n")
    print(summary(catalog, convert, tf_convert))
    print("\n#### catalog\n")
    print(bench_catalog.report(catalog))
    print("\n#### convert\n")
    print(bench_convert.report(convert))
    print("\n#### TF convert\n")
    print(bench_tf_convert.report(tf_convert))
    if args.json:
        args.json.write_text(json.dumps({"catalog": catalog, "convert": convert,
                                         "tf_convert": tf_convert}, indent=2) + "\n")
    return 0 if all_met(catalog, convert, tf_convert) else 1


if __name__ == "__main__":
    sys.exit(main())
