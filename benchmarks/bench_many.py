#!/usr/bin/env python
"""Benchmark ``ckptctl convert`` on a lab's history: many small Lightning-shaped checkpoints.

A child process writes ``--experiments`` experiment folders (default 50) of ``--per-exp``
checkpoints each (default 20, so 1,000), every one a ~300 KB Lightning-shaped ``.ckpt``
(``state_dict`` of a small MLP, ``epoch``, ``global_step``, ``callbacks`` with a
ModelCheckpoint's state, ``optimizer_states``, ``hyper_parameters``) next to a CSVLogger
``metrics.csv`` and ``hparams.yaml``. Then, on copies of the same tree, same run, alternating
after one warm-up round:

* the naive loop (the baseline): one ``python`` process that, for every checkpoint,
  ``torch.load(weights_only=True)`` then writes its state dict with ``h5py`` (no hashing,
  no fsync, no verification, no metadata);
* ``ckptctl convert --outputs-dir TREE --jobs 1 --force``;
* ``ckptctl convert --outputs-dir TREE --jobs 2 --force`` (on 2 cores).

Targets: ``--jobs 1`` no slower than the naive loop (time ratio <= 1.0); ``--jobs 2`` at
least 1.7x faster than ``--jobs 1``. Every run writes fresh outputs (the previous ones are
deleted, not timed; ``sync`` runs untimed before each).

Run: ``python benchmarks/bench_many.py [--repeat 5 --experiments 50 --per-exp 20]``.
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

WRITE_TREE = r"""
import sys, torch
from pathlib import Path
root, experiments, per_exp = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
torch.manual_seed(0)
for e in range(experiments):
    exp = root / f"2024-0{1 + e % 9}-1{e % 10}" / f"run{e:03d}_mlp"
    ckpts = exp / "checkpoints"
    ckpts.mkdir(parents=True)
    (exp / "hparams.yaml").write_text(f"lr: 0.001\nhidden: 128\nseed: {e}\n")
    rows = ["epoch,step,train_loss,val_loss"] + [f"{i},{(i + 1) * 10},{1 / (i + 1):.4f},{1.2 / (i + 1):.4f}" for i in range(per_exp)]
    (exp / "metrics.csv").write_text("\n".join(rows) + "\n")
    for i in range(per_exp):
        state = {"layer1.weight": torch.randn(128, 256), "layer1.bias": torch.randn(128),
                 "layer2.weight": torch.randn(128, 128), "layer2.bias": torch.randn(128),
                 "head.weight": torch.randn(10, 128), "head.bias": torch.randn(10)}
        torch.save({"state_dict": state, "epoch": i, "global_step": (i + 1) * 10,
                    "pytorch-lightning_version": "2.4.0",
                    "callbacks": {"ModelCheckpoint{'monitor': 'val_loss', 'mode': 'min'}": {
                        "monitor": "val_loss", "best_model_score": torch.tensor(1.2 / (i + 1)),
                        "current_score": torch.tensor(1.2 / (i + 1))}},
                    "optimizer_states": [{"state": {}, "param_groups": [{"lr": 0.001}]}],
                    "hyper_parameters": {"lr": 0.001, "hidden": 128, "seed": e}},
                   ckpts / f"epoch={i}-step={(i + 1) * 10}-val_loss={1.2 / (i + 1):.2f}.ckpt")
"""

NAIVE = r"""
import sys, h5py, torch
from pathlib import Path
for path in sorted(Path(sys.argv[1]).rglob("*.ckpt")):
    checkpoint = torch.load(path, weights_only=True, map_location="cpu")
    with h5py.File(path.with_suffix(".naive.h5"), "w") as out:
        for name, tensor in checkpoint["state_dict"].items():
            out.create_dataset(name, data=tensor.numpy())
"""


# Where one checkpoint's time goes: ``convert`` in-process over the tree, with timers around
# the product's own functions (in that child only). Names that no longer exist are skipped.
PHASES = r"""
import functools, json, sys, time
from collections import defaultdict
from pathlib import Path
tree = Path(sys.argv[1])
spent, calls, missing = defaultdict(float), defaultdict(int), []
import ckptctl.ops.convert as C
import ckptctl.layouts.ckptctl_tensors as L
WRAP = [(C, "plan_conversion", "read the source (zip, pickle pre-pass, unpickle) + metadata"),
        (C, "_write_weights", "weights: write + verify + hash + fsync"),
        (L, "write_tensors", "  of which: write the HDF5 file"),
        (L, "verify_datasets", "  of which: read back and compare crc32"),
        (C, "sha256_files", "sha256 (source and weights)"),
        (C, "fsync_file", "fsync the weights file"),
        (C, "fsync_dir", "fsync the folder after the rename"),
        (C, "_build_sidecar", "build and validate the sidecar (pydantic)"),
        (C, "sidecar_yaml", "sidecar to YAML"),
        (C, "write_atomic", "write the sidecar (temp file, fsync, rename)"),
        (C, "_convert_one", "one checkpoint, in all")]
for module, name, label in WRAP:
    original = getattr(module, name, None)
    if original is None:
        missing.append(name)
        continue
    def timed(*args, __f=original, __label=label, **kwargs):
        start = time.perf_counter()
        try:
            return __f(*args, **kwargs)
        finally:
            spent[__label] += time.perf_counter() - start
            calls[__label] += 1
    setattr(module, name, timed)
targets, _ = C.targets_for_outputs_dir(tree, True)
report = C.convert(targets, C.ConvertOptions(force=True))
n = len(report.items)
print(json.dumps({"checkpoints": n, "missing": missing,
                  "ms_per_checkpoint": {label: spent[label] / n * 1000
                                        for _, _, label in WRAP if label in spent}}))
"""


def phases(tree: Path, runs: int = 3) -> dict[str, Any]:
    """Median milliseconds per checkpoint of each phase, over ``runs`` in-process runs."""
    import statistics

    results = []
    for _ in range(runs):
        clean(tree)
        out = subprocess.run([PYTHON, "-c", PHASES, str(tree)], check=True, capture_output=True,
                             text=True)
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    labels = list(results[0]["ms_per_checkpoint"])
    return {"missing": results[0]["missing"],
            "ms_per_checkpoint": {k: statistics.median(r["ms_per_checkpoint"].get(k, 0.0)
                                                       for r in results) for k in labels}}


def clean(tree: Path) -> None:
    for pattern in ("*.weights.h5", "*.metadata.yaml", "*.naive.h5", ".*.ckptctl-lock"):
        for path in tree.rglob(pattern):
            path.unlink()
    subprocess.run(["sync"], check=False)


def run(repeat: int, experiments: int, per_exp: int, keep: bool) -> dict[str, Any]:
    work = fresh_dir(WORK / "many")
    try:
        tree = work / "outputs"
        log(f"writing {experiments} x {per_exp} checkpoints ...")
        subprocess.run([PYTHON, "-c", WRITE_TREE, str(tree), str(experiments), str(per_exp)],
                       check=True)
        count = len(list(tree.rglob("*.ckpt")))
        size = sum(p.stat().st_size for p in tree.rglob("*.ckpt"))
        exe = ckptctl_exe()
        commands = {
            "naive loop (torch.load + h5py)": [PYTHON, "-c", NAIVE, str(tree)],
            "ckptctl convert --jobs 1": [exe, "convert", "--outputs-dir", str(tree), "--jobs", "1",
                                         "--force"],
            "ckptctl convert --jobs 2": [exe, "convert", "--outputs-dir", str(tree), "--jobs", "2",
                                         "--force"],
        }
        series = {name: Series(name) for name in commands}
        for round_ in range(repeat + 1):
            for name, command in commands.items():
                clean(tree)
                measured = run_process(command)
                if round_:  # round 0 warms the page cache and the bytecode cache
                    series[name].runs.append(measured)
            log(f"round {round_}/{repeat} done")
        naive, one, two = (series[n] for n in commands)
        log("phases (in-process) ...")
        breakdown = phases(tree)
        return {
            "phases": breakdown,
            "checkpoints": count, "bytes": size,
            "seconds": {n: s.seconds for n, s in series.items()},
            "all_seconds": {n: s.all_seconds for n, s in series.items()},
            "peak_rss_mib": {n: s.max_rss_bytes / 2**20 for n, s in series.items()},
            "jobs1_over_naive": one.seconds / naive.seconds,
            "jobs1_over_naive_paired": one.paired_ratio(naive),
            "jobs2_speedup": one.seconds / two.seconds,
            "jobs2_speedup_paired": 1 / two.paired_ratio(one),
        }
    finally:
        if not keep:
            remove_work(work)


def report(result: dict[str, Any]) -> str:
    rows = [[name, f"{seconds:.2f} s", f"{result['checkpoints'] / seconds:.0f}/s",
             f"{result['peak_rss_mib'][name]:.0f} MiB"]
            for name, seconds in result["seconds"].items()]
    one_ok = result["jobs1_over_naive"] <= 1.0
    two_ok = result["jobs2_speedup"] >= 1.7
    return "\n".join([
        f"### convert, many small checkpoints ({result['checkpoints']} x "
        f"{result['bytes'] / result['checkpoints'] / 1024:.0f} KB)", "",
        markdown_table(["command", "median wall", "checkpoints/s", "peak RSS"], rows), "",
        f"* `--jobs 1` / naive loop: **{result['jobs1_over_naive']:.2f}x** the time (paired "
        f"{result['jobs1_over_naive_paired']:.2f}x); target <= 1.0: {verdict(one_ok)}",
        f"* `--jobs 2` speed-up over `--jobs 1`: **{result['jobs2_speedup']:.2f}x** (paired "
        f"{result['jobs2_speedup_paired']:.2f}x); target >= 1.7: {verdict(two_ok)}", "",
        "Where one checkpoint's time goes (`--jobs 1`, in-process, median of 3 runs; "
        "phases not found in the product: "
        f"{', '.join(result['phases']['missing']) or 'none'}):", "",
        markdown_table(["phase", "ms per checkpoint"],
                       [[label, f"{ms:.2f}"] for label, ms in
                        result["phases"]["ms_per_checkpoint"].items()]), ""])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--experiments", type=int, default=50)
    parser.add_argument("--per-exp", type=int, default=20)
    parser.add_argument("--keep", action="store_true", help="keep benchmarks/_work/many")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    result = run(args.repeat, args.experiments, args.per_exp, args.keep)
    print(report(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
