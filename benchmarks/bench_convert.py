#!/usr/bin/env python
"""Benchmark ``ckptctl convert`` on a ~1.1 GB float32 state dict against a plain file copy.

A child process writes the source with ``torch.save`` (zip format): float32 tensors of 256,
192, 192, 128, 128, 96 and 64 MiB, one 32 MiB bfloat16 tensor and a few small ones (biases,
norms, int64 buffers). Then, same file, same run, alternating after one warm-up of each:

* ``shutil.copyfile`` in a fresh ``python`` process, and the ``cp`` command (the baselines);
* for information only: ``cp`` then ``sync FILE`` (an fsync of the copy; convert fsyncs
  its output, a plain copy does not), and a copy through user space (``readinto``/``write``
  of one 8 MiB buffer: ``cp`` and ``shutil.copyfile`` copy inside the kernel with
  ``copy_file_range``/``sendfile``, which no converter that reads the bytes can do);
* ``ckptctl convert --checkpoint FILE --force`` (whole process, reconverting in place).

The order of the five rotates from one round to the next (see ``measure``). Every timed run
writes new files: the previous copy, or the previous weights and sidecar, are deleted (not
timed) first. So this is a first conversion; ``--force`` only guarantees it is not skipped.
Reconverting over existing outputs also frees the old 1.1 GB weights file (in ``os.replace``):
the in-process phase run at the end is such a reconversion and shows that cost separately.

Each is a whole process reaped with ``os.wait4``: wall time and peak RSS (anonymous and
file-backed pages, so memory-mapped reads count). Dirty pages are flushed (``sync``, not
timed) before every timed run so no run pays for the previous one's write-back. The source
stays in the page cache for all of them (it needs ~5 GB of RAM), the fair, repeatable case.

Targets: convert throughput >= 0.5 x copy throughput; convert peak RSS <= 2 x largest tensor
+ 300 MiB. Three last, separate convert runs time the phases of the conversion in-process.

Run: ``python benchmarks/bench_convert.py [--repeat 5]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path
from typing import Any

from _common import (
    MB,
    PYTHON,
    RESOLVE_SOURCE,
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

#: convert throughput / (`cp` + `sync FILE`) throughput: the disk is the limit (issue 11)
TARGET_RATIO_CP_FSYNC = 0.75
#: convert's peak RSS, memory-mapped pages included (issue 11)
TARGET_RSS = 128 * MB
TARGET_RATIO = 0.5  # the older target against a plain copy, reported for information
TARGET_RSS_EXTRA = 300 * MB
#: name -> (shape, dtype); the largest is 256 MiB, the total about 1.14 GB.
TENSORS: dict[str, tuple[tuple[int, ...], str]] = {
    "embed_tokens.weight": ((65536, 1024), "float32"),         # 256 MiB, the largest
    "layers.0.mlp.up_proj.weight": ((49152, 1024), "float32"),  # 192 MiB
    "layers.0.mlp.down_proj.weight": ((1024, 49152), "float32"),  # 192 MiB
    "layers.1.mlp.up_proj.weight": ((32768, 1024), "float32"),  # 128 MiB
    "layers.1.mlp.down_proj.weight": ((1024, 32768), "float32"),  # 128 MiB
    "layers.0.attn.qkv_proj.weight": ((3072, 8192), "float32"),  # 96 MiB
    "lm_head.weight": ((16384, 1024), "float32"),               # 64 MiB
    "layers.1.attn.qkv_proj.weight": ((16384, 1024), "bfloat16"),  # 32 MiB
    "layers.0.attn.qkv_proj.bias": ((3072,), "float32"),
    "layers.0.input_layernorm.weight": ((1024,), "float32"),
    "layers.1.input_layernorm.weight": ((1024,), "float32"),
    "norm.weight": ((1024,), "float32"),
    "position_ids": ((1, 2048), "int64"),
    "bn.num_batches_tracked": ((), "int64"),
}

COPY_SCRIPT = "import shutil, sys; shutil.copyfile(sys.argv[1], sys.argv[2])"
# A copy through user space, as any converter that reads the bytes itself must do: one
# reused 8 MiB buffer (``shutil.copyfileobj`` would allocate, and page-fault, a new one per
# read, which in this VM sometimes costs seconds of system time).
COPY_LOOP_SCRIPT = """
import sys
buffer = bytearray(8 << 20)
view = memoryview(buffer)
with open(sys.argv[1], "rb", buffering=0) as src, open(sys.argv[2], "wb", buffering=0) as dst:
    while count := src.readinto(buffer):
        dst.write(view[:count])
"""

# One extra conversion, in-process, with the product's functions wrapped by timers (in that
# child only: nothing is changed on disk). Gives wall time per phase; the source hash runs
# on a thread of its own, so it overlaps the phases of the main thread. Internals move, so a
# function that is not there is listed as missing instead of failing the benchmark.
PHASES = r"""
import importlib, json, os, sys, threading, time
from collections import defaultdict
from pathlib import Path
t_start = time.perf_counter()
from ckptctl.ops import convert as conv
import h5py
t_imports = time.perf_counter() - t_start
spent = defaultdict(float)
missing = []
main = threading.main_thread()

""" + RESOLVE_SOURCE + r"""
order = []

def timed(label, *candidates):
    # Wraps the first of the candidates ("module.or.Class:function") that exists.
    order.extend([label, label + " [hash thread]"])
    for candidate in candidates:
        owner_name, attr = candidate.split(":")
        try:
            owner = resolve(owner_name)
            original = getattr(owner, attr)
        except (ImportError, AttributeError):
            continue
        break
    else:
        missing.append(" / ".join(candidates))
        return
    def wrapper(*args, **kwargs):
        t = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            name = label
            if threading.current_thread() is not main:
                name += " [hash thread]"
            spent[name] += time.perf_counter() - t
    setattr(owner, attr, wrapper)

C = "ckptctl.ops.convert"
L = "ckptctl.layouts.ckptctl_tensors"
timed("plan: open checkpoint, gather metadata", f"{C}:plan_conversion")
timed("weights: write, verify, hash, fsync", f"{C}:_write_weights")
timed("  of which write the HDF5 file (crc32 + h5py)", f"{L}:write_tensors")
timed("    of which crc32 check of storages (in slices)",
      "ckptctl.readers.torch_files.TorchFile:check_storage_in_slices")
timed("    of which slices written (h5py write_direct)", "h5py.Dataset:write_direct")
timed("  of which read-back verification (crc32 per dataset)", f"{L}:verify_datasets")
timed("sha256 (source on its thread; new weights beside read-back)", f"{C}:sha256_files")
timed("fsync (weights, sidecar, folders)", "os:fsync")
timed("check an existing weights file is ckptctl's", f"{C}:_refuse_foreign_file")
timed("fingerprint the source", f"{C}:fingerprint")
timed("wait for the source hash thread (join)", "threading.Thread:join")
timed("build sidecar", f"{C}:_build_sidecar")
timed("os.replace (rename over, frees the previous outputs)", "os:replace")
timed("write sidecar (atomic)", f"{C}:write_atomic")
source = Path(sys.argv[1])
targets, _ = conv.targets_for_checkpoint(source)
t0 = time.perf_counter()
report = conv.convert(targets, conv.ConvertOptions(force=True))
total = time.perf_counter() - t0
assert report.items[0].status == "converted", report.items[0].reason
ordered = {k: spent[k] for k in order if k in spent}
print(json.dumps({"seconds": {"imports": t_imports, "convert() total": total, **ordered},
                  "missing": missing}))
"""


def write_source(path: Path) -> None:
    """The checkpoint (in its own process: its ~1.1 GB of tensors must not stay in ours)."""
    import torch

    torch.manual_seed(0)
    state = {}
    for name, (shape, dtype) in TENSORS.items():
        if dtype == "int64":
            state[name] = torch.arange(max(1, int(torch.tensor(shape).prod())),
                                       dtype=torch.int64).reshape(shape)
        else:
            state[name] = torch.randn(shape, dtype=torch.float32).to(getattr(torch, dtype))
    torch.save(state, path)


def tensor_bytes() -> dict[str, int]:
    sizes = {"float32": 4, "bfloat16": 2, "int64": 8}
    result = {}
    for name, (shape, dtype) in TENSORS.items():
        count = 1
        for n in shape:
            count *= n
        result[name] = count * sizes[dtype]
    return result


def check_weights(weights: Path) -> None:
    """The converted file holds every tensor with its shape (a wrong-output guard)."""
    import h5py

    with h5py.File(weights, "r") as f:
        got = {k.replace("%2E", "."): tuple(f["tensors"][k].shape) for k in f["tensors"]}
    want = {name: shape for name, (shape, _) in TENSORS.items()}
    if got != want:
        raise SystemExit(f"converted weights differ from the source: {got} != {want}")


def measure(source: Path, repeat: int, work: Path) -> dict[str, Series]:
    exe = ckptctl_exe()
    dest = work / "copy.bin"
    outputs = (work / "model.weights.h5", work / "model.metadata.yaml")
    commands = {
        "shutil": [PYTHON, "-c", COPY_SCRIPT, str(source), str(dest)],
        "cp": ["cp", str(source), str(dest)],
        "cp_fsync": ["sh", "-c", 'cp "$1" "$2" && sync "$2"', "sh", str(source), str(dest)],
        "copy_loop": [PYTHON, "-c", COPY_LOOP_SCRIPT, str(source), str(dest)],
        "convert": [exe, "convert", "--checkpoint", str(source), "--force"],
    }
    series = {name: Series(name) for name in commands}
    names = list(commands)
    for rep in range(repeat + 1):  # rep 0 is the warm-up of each, not counted
        # The order rotates: whatever runs right after a 1.1 GB file was written and freed
        # is often slower here (first touch of freed memory in this VM), so each command
        # takes that place in turn instead of one of them always.
        order = names[rep % len(names):] + names[:rep % len(names)]
        line = []
        for name in order:
            for output in (dest, *outputs):  # every run writes new files, none frees old ones
                output.unlink(missing_ok=True)
            os.sync()  # no run pays for write-back of the previous one's dirty pages
            run = run_process(commands[name])
            if name == "convert":
                check_weights(outputs[0])
            elif dest.stat().st_size != source.stat().st_size:
                raise SystemExit(f"{name} produced a wrong copy")
            if rep:
                series[name].runs.append(run)
            line.append(f"{name} {run.seconds:.2f}s {run.max_rss_bytes / MB:.0f}MiB")
        log(f"  {'warm-up' if rep == 0 else f'rep {rep}'}: " + ", ".join(line))
    dest.unlink(missing_ok=True)
    os.sync()
    return series


def phases(source: Path, runs: int = 3) -> tuple[dict[str, float], list[str]]:
    """Phase times of ``runs`` in-process reconversions, median of each phase."""
    out = source.with_name("phases.json")
    samples = []
    for _ in range(runs):
        os.sync()
        with open(out, "wb") as handle:
            run_process([PYTHON, "-c", PHASES, str(source)], stdout=handle)
        samples.append(json.loads(out.read_text()))
        out.unlink()
    keys = list(dict.fromkeys(k for sample in samples for k in sample["seconds"]))
    median = {k: statistics.median(s["seconds"].get(k, 0.0) for s in samples) for k in keys}
    return median, samples[-1]["missing"]


def run(repeat: int = 5, keep: bool = False) -> dict[str, Any]:
    work = fresh_dir(WORK / "convert")
    try:
        source = work / "model.pt"
        log("convert: writing the ~1.1 GB source with torch.save ...")
        run_process([PYTHON, __file__, "--write-source", str(source)], measured=False)
        size = source.stat().st_size
        sizes = tensor_bytes()
        largest = max(sizes.values())
        log(f"convert: {size / 1e9:.2f} GB, largest tensor {largest / MB:.0f} MiB; timing x{repeat} ...")
        series = measure(source, repeat, work)
        weights = work / "model.weights.h5"
        if not weights.exists():  # the phase run is a reconversion, over existing outputs
            run_process([ckptctl_exe(), "convert", "--checkpoint", str(source)], measured=False)
        breakdown, missing = phases(source)
        weights_size = weights.stat().st_size
        result = summarize(series, size, weights_size, largest, breakdown, repeat)
        result["phase_hooks_missing"] = missing
        return result
    finally:
        if not keep:
            remove_work(work)


def summarize(series: dict[str, Series], size: int, weights_size: int, largest: int,
              breakdown: dict[str, float], repeat: int) -> dict[str, Any]:
    convert = series["convert"]
    rss_limit = 2 * largest + TARGET_RSS_EXTRA
    worst_rss = max(r.max_rss_bytes for r in convert.runs)
    ratios = {k: round(s.seconds / convert.seconds, 3) for k, s in series.items() if k != "convert"}
    paired = {k: round(1.0 / convert.paired_ratio(s), 3) for k, s in series.items() if k != "convert"}
    return {
        "source_bytes": size, "weights_bytes": weights_size, "largest_tensor_bytes": largest,
        "repeat": repeat,
        "median_seconds": {k: round(s.seconds, 3) for k, s in series.items()},
        "median_cpu_seconds": {k: round(s.cpu_seconds, 3) for k, s in series.items()},
        "all_seconds": {k: s.all_seconds for k, s in series.items()},
        "throughput_mb_s": {k: round(size / s.seconds / 1e6, 1) for k, s in series.items()},
        "median_max_rss_mib": {k: round(s.max_rss_bytes / MB, 1) for k, s in series.items()},
        "max_rss_all_mib": {k: [round(r.max_rss_bytes / MB) for r in s.runs]
                            for k, s in series.items()},
        # throughput ratio convert / copy = copy seconds / convert seconds
        "ratio_convert_vs": ratios,
        "paired_ratio_convert_vs": paired,
        "ratio_target_met": {k: ratios[k] >= TARGET_RATIO for k in ("shutil", "cp")},
        "cp_fsync_target_met": ratios["cp_fsync"] >= TARGET_RATIO_CP_FSYNC,
        "convert_max_rss_worst_mib": round(worst_rss / MB, 1),
        "rss_limit_mib": round(rss_limit / MB, 1),
        "rss_target_met": worst_rss <= rss_limit,
        "rss_128_target_met": worst_rss <= TARGET_RSS,
        "phases_seconds": {k: round(v, 3) for k, v in breakdown.items()},
    }


LABELS = {"shutil": "`shutil.copyfile` (python process)", "cp": "`cp`",
          "cp_fsync": "`cp` + `sync FILE` (information)",
          "copy_loop": "user-space copy, `readinto`/`write` of one 8 MiB buffer (information)",
          "convert": "`ckptctl convert --checkpoint FILE --force`"}


def report(result: dict[str, Any]) -> str:
    size = result["source_bytes"]
    ratios = result["ratio_convert_vs"]
    paired = result["paired_ratio_convert_vs"]
    rows = [[label, f"{result['median_seconds'][k]:.2f}", f"{result['median_cpu_seconds'][k]:.2f}",
             f"{result['throughput_mb_s'][k]:.0f}", f"{ratios[k]:.2f}" if k in ratios else "-",
             f"{paired[k]:.2f}" if k in paired else "-", f"{result['median_max_rss_mib'][k]:.0f}"]
            for k, label in LABELS.items()]
    met = result["ratio_target_met"]
    rss = result["convert_max_rss_worst_mib"]
    phase_rows = [[k, f"{v:.3f}"] for k, v in result["phases_seconds"].items()]
    return "\n\n".join([
        f"convert: source {size / 1e9:.2f} GB ({size} bytes), largest tensor "
        f"{result['largest_tensor_bytes'] / MB:.0f} MiB, weights file "
        f"{result['weights_bytes'] / 1e9:.2f} GB; {result['repeat']} timed rounds after one "
        "warm-up round, the five processes in turn (rotating order) each round",
        markdown_table(["process", "wall s", "CPU s", "MB/s (source)", "convert / this",
                        "convert / this, paired", "peak RSS MiB"], rows),
        "wall s, CPU s (user + system): medians; MB/s: source bytes / median wall time; "
        "convert / this: throughput ratio from the medians; paired: median of the per-round "
        "ratios (same round, same machine load).",
        f"Target: convert throughput >= {TARGET_RATIO_CP_FSYNC} x (`cp` + `sync FILE`): "
        f"{ratios['cp_fsync']:.2f} x ({verdict(result['cp_fsync_target_met'])}).",
        f"Target: convert peak RSS <= {TARGET_RSS // MB} MiB: worst run {rss:.0f} MiB, "
        f"{verdict(result['rss_128_target_met'])}.",
        f"Older targets, for information: convert throughput >= {TARGET_RATIO} x copy: "
        f"{ratios['shutil']:.2f} x shutil ({verdict(met['shutil'])}), {ratios['cp']:.2f} x cp "
        f"({verdict(met['cp'])}); peak RSS <= 2 x largest tensor + 300 MiB = "
        f"{result['rss_limit_mib']:.0f} MiB ({verdict(result['rss_target_met'])}).",
        "Convert phases (3 extra runs in-process, reconversions over existing outputs, median "
        "wall seconds; the source hash runs on its own thread and overlaps the others; fsync "
        "includes the sidecar's and folders'):",
        markdown_table(["phase", "s"], phase_rows),
        *([f"(Product functions not found for timing: {', '.join(result['phase_hooks_missing'])}.)"]
          if result.get("phase_hooks_missing") else []),
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--keep", action="store_true", help="keep benchmarks/_work/convert")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--write-source", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.write_source:
        write_source(args.write_source)
        return
    result = run(args.repeat, args.keep)
    print(report(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
