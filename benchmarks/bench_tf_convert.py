#!/usr/bin/env python
"""Benchmark ``ckptctl convert`` of a ~560 MB TF-index checkpoint against TensorFlow + h5py.

The baseline is a TensorFlow-based conversion (``tf.train.load_checkpoint`` + h5py), measured
in the same run.

The source is built in a child process the way users have them:

* ``keras2``: a tf_keras (Keras 2) Sequential model of Dense and BatchNormalization layers
  (kernels of 32 to 128 MiB float32, ~560 MB in all) saved with
  ``model.save_weights("bigmodel.ckpt")`` (TF format: ``bigmodel.ckpt.index`` + one
  ``.data-00000-of-00001`` shard). ckptctl maps it onto Keras 3's ``.weights.h5`` layout.
* ``manager`` (second variant): the same layers as a Keras 3 model inside a
  ``tf.train.Checkpoint(model=..., optimizer=..., epoch=...)`` saved by a
  ``tf.train.CheckpointManager`` (``ckpts/ckpt-12``), optimizer SGD without momentum (its
  ``iteration`` and ``learning_rate`` only, no slots).

BatchNormalization parameters and biases get random values, so every variable is distinct
and a mix-up between layers cannot go unnoticed by the check below.

Timed per round, as whole processes (interpreter start-up and imports included), in a
rotating order, each writing new files (previous outputs deleted and ``sync`` first, untimed):

* **the baseline**: a python process doing ``import tensorflow as tf, h5py``,
  ``reader = tf.train.load_checkpoint(prefix)``, then for every name of
  ``reader.get_variable_to_shape_map()`` except optimizer slots (``.OPTIMIZER_SLOT``) and
  ``_CHECKPOINTABLE_OBJECT_GRAPH``, ``reader.get_tensor(name)`` written as one h5py dataset;
  the file is closed (not fsynced). The straightforward TensorFlow-based conversion. (It
  keeps names under ``optimizer/``: in a ``tf.train.Checkpoint`` of a Keras 3 model and its
  optimizer, the model's trainable weights are saved as ``optimizer/_trainable_variables/N``,
  the shortest path to them in the object graph.)
* ``ckptctl convert --checkpoint PREFIX --force``: besides converting it hashes the source
  and the new weights file with sha256, fsyncs, and verifies the written datasets by reading
  them back (crc32) - work the baseline does not do.
* for information, once (first variant): ``python -c "import tensorflow, h5py"``, the
  baseline's import cost alone.

After the timed rounds, a separate process checks both outputs: every dataset ckptctl wrote
is bit-for-bit ``reader.get_tensor`` of its source variable, at the Keras 3 path the Keras 3
naming rules give (the builder records, per Keras 3 path, which checkpoint key holds that
variable, found by value), and the baseline wrote every variable. Then three in-process
reconversions time ckptctl's phases.

Targets: ckptctl >= 3 x faster end to end (baseline wall / ckptctl wall, medians) and peak
RSS <= 0.5 x the baseline's (medians).

Run: ``python benchmarks/bench_tf_convert.py [--repeat 5 --variants keras2,manager --keep]``.
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

TARGET_SPEEDUP = 3.0
TARGET_RSS_RATIO = 0.5
VARIANTS = ("keras2", "manager")
#: (class, units) after an Input of INPUT_DIM; the kernels are 128, 128, 128, 64, 32, 48 MiB
#: float32 (+ a small head), ~560 MB in all.
INPUT_DIM = 4096
LAYERS: list[tuple[str, int]] = [
    ("Dense", 8192), ("BatchNormalization", 0),
    ("Dense", 4096), ("BatchNormalization", 0),
    ("Dense", 8192), ("BatchNormalization", 0),
    ("Dense", 2048), ("BatchNormalization", 0),
    ("Dense", 4096), ("Dropout", 0),
    ("Dense", 3072),
    ("Dense", 10),
]
#: Keras 3's variable order per layer class (``.weights.h5`` ``vars/0``, ``vars/1``, ...).
KERAS3_ORDER = {"Dense": ("kernel", "bias"),
                "BatchNormalization": ("gamma", "beta", "moving_mean", "moving_variance")}
SNAKE = {"Dense": "dense", "BatchNormalization": "batch_normalization", "Dropout": "dropout"}

# The baseline: the straightforward TensorFlow-based conversion.
BASELINE = r"""
import sys
import h5py
import tensorflow as tf
prefix, out = sys.argv[1], sys.argv[2]
reader = tf.train.load_checkpoint(prefix)
with h5py.File(out, "w") as f:
    for name in reader.get_variable_to_shape_map():
        if name == "_CHECKPOINTABLE_OBJECT_GRAPH" or ".OPTIMIZER_SLOT" in name:
            continue
        f.create_dataset(name, data=reader.get_tensor(name))
"""
TF_IMPORT = "import tensorflow, h5py"

# Outside the timed runs, in a process of its own: both outputs against the source.
CHECK = r"""
import json, sys
import h5py
import numpy as np
import tensorflow as tf
prefix, truth_path, ours, theirs = sys.argv[1:5]
truth = json.load(open(truth_path))
reader = tf.train.load_checkpoint(prefix)
problems = []
with h5py.File(ours, "r") as f:
    found = []
    f.visititems(lambda name, obj: found.append(name) if isinstance(obj, h5py.Dataset) else None)
    if sorted(found) != sorted(truth):
        problems.append(f"datasets {sorted(set(found) ^ set(truth))} missing or unexpected")
    equal = 0
    for path, key in truth.items():
        if path not in f:
            continue
        got, want = f[path][()], reader.get_tensor(key)
        if (got.dtype != want.dtype or got.shape != want.shape
                or got.tobytes() != want.tobytes()):
            problems.append(f"{path} differs from {key}")
        else:
            equal += 1
shapes = reader.get_variable_to_shape_map()
names = [n for n in shapes if n != "_CHECKPOINTABLE_OBJECT_GRAPH" and ".OPTIMIZER_SLOT" not in n]
with h5py.File(theirs, "r") as f:
    baseline = sum(1 for n in names if n in f and f[n].shape == tuple(shapes[n]))
if baseline != len(names):
    problems.append(f"the baseline wrote {baseline} of {len(names)} variables")
print(json.dumps({"datasets": len(found), "equal": equal, "baseline_datasets": baseline,
                  "problems": problems}))
"""

# Three extra conversions, in-process, with the product's functions wrapped by timers (in
# that child only). Hash threads overlap the main thread's phases. Internals move, so a
# function that is not there is listed as missing instead of failing the benchmark.
PHASES = r"""
import importlib, json, sys, threading, time
from collections import defaultdict
from pathlib import Path
t_start = time.perf_counter()
from ckptctl.ops import convert as conv
import h5py
t_imports = time.perf_counter() - t_start
spent = defaultdict(float)
calls = defaultdict(int)
missing = []
order = []
main = threading.main_thread()

""" + RESOLVE_SOURCE + r"""
def timed(label, candidate, name_of=None):
    # Wraps "module.or.Class:function"; name_of(args) may refine the label per call.
    owner_name, attr = candidate.split(":")
    try:
        owner = resolve(owner_name)
        original = getattr(owner, attr)
    except (ImportError, AttributeError):
        missing.append(candidate)
        return
    order.append(label)
    def wrapper(*args, **kwargs):
        t = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            name = name_of(args) if name_of else label
            if threading.current_thread() is not main:
                name += " [thread]"
            if name not in order:
                order.append(name)
            spent[name] += time.perf_counter() - t
            calls[name] += 1
    setattr(owner, attr, wrapper)

def hashed(args):
    paths = args[0]
    if len(paths) == 1 and paths[0].name.endswith(".h5"):
        return "sha256 of the new weights file"
    return "sha256 of the source (index + shards)"

C, K, T = "ckptctl.ops.convert", "ckptctl.layouts.keras3", "ckptctl.readers.tf_index"
V = "ckptctl.layouts.ckptctl_tensors"
timed("plan: open index, object graph, metadata (plan_conversion)", f"{C}:plan_conversion")
timed("write weights (write_keras3_weights)", f"{K}:write_keras3_weights")
timed("  of which read tensor bytes from the shard", f"{T}.TFIndexCheckpoint:_raw")
timed("  of which crc32c check of those bytes", f"{T}:_crc")
timed("  of which h5py create_dataset", "h5py.Group:create_dataset")
timed("  of which zlib.crc32 of the values (write side and read-back)",
      "ckptctl.layouts.ckptctl_tensors:checksum")
timed("fsync (weights, sidecar, folders)", "os:fsync")
timed("read back + crc32 (verify_datasets)", f"{V}:verify_datasets")
timed("sha256", f"{C}:sha256_files", hashed)
timed("wait for a hash thread (join)", "threading.Thread:join")
timed("check an existing weights file is ckptctl's", f"{C}:_refuse_foreign_file")
timed("fingerprint the source", f"{C}:fingerprint")
timed("build sidecar", f"{C}:_build_sidecar")
timed("os.replace (rename over, frees the previous outputs)", "os:replace")
timed("write sidecar (atomic)", f"{C}:write_atomic")
checks = {}
import ckptctl.layouts.ckptctl_tensors as layout
original_verify = layout.verify_datasets
def count_checks(path, checksums):
    checks["datasets checked by convert's verify_datasets"] = len(checksums)
    return original_verify(path, checksums)
layout.verify_datasets = count_checks
targets, _ = conv.targets_for_checkpoint(Path(sys.argv[1]))
t0 = time.perf_counter()
report = conv.convert(targets, conv.ConvertOptions(force=True))
total = time.perf_counter() - t0
assert report.items[0].status == "converted", report.items[0].reason
seconds = {"imports (ckptctl.ops.convert, h5py)": t_imports, "convert() total": total}
seconds.update((k, spent[k]) for k in order if k in spent and k != "sha256")
print(json.dumps({"seconds": seconds, "calls": {k: calls[k] for k in seconds if k in calls},
                  "checks": checks, "missing": missing}))
"""


# --- the source, built in a child process ---------------------------------------------------


def write_source(prefix: Path, flavour: str, truth_path: Path) -> None:
    """Build the model, save it, and record which checkpoint key holds each Keras 3 path."""
    import hashlib

    import numpy as np

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    if flavour == "keras2":
        import tf_keras as keras
    else:
        import keras
    rng = np.random.default_rng(0)
    layers = [keras.Input(shape=(INPUT_DIM,))]
    for kind, units in LAYERS:
        if kind == "Dense":
            layers.append(keras.layers.Dense(units, activation="relu" if units > 10 else None))
        elif kind == "BatchNormalization":
            layers.append(keras.layers.BatchNormalization())
        else:
            layers.append(keras.layers.Dropout(0.1))
    model = keras.Sequential(layers)
    for layer in model.layers:  # trained-looking values, every variable distinct
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.weights[0].shape[0]
            layer.set_weights([rng.uniform(0.5, 1.5, n).astype("float32"),
                               rng.normal(0, 0.1, n).astype("float32"),
                               rng.normal(0, 0.5, n).astype("float32"),
                               rng.uniform(0.5, 2.0, n).astype("float32")])
        elif isinstance(layer, keras.layers.Dense):
            kernel, bias = layer.get_weights()
            layer.set_weights([kernel, rng.normal(0, 0.01, bias.shape).astype("float32")])
    if flavour == "keras2":
        model.save_weights(str(prefix))
    else:
        optimizer = keras.optimizers.SGD(learning_rate=0.01)
        optimizer.build(model.trainable_variables)
        epoch = tf.Variable(12, dtype=tf.int64)
        checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, epoch=epoch)
        manager = tf.train.CheckpointManager(checkpoint, str(prefix.parent), max_to_keep=3)
        saved = manager.save(checkpoint_number=12)
        if Path(saved) != prefix:
            raise SystemExit(f"saved {saved}, expected {prefix}")
    # Keras 3 path -> checkpoint key, found by value (independent of ckptctl's mapping).
    reader = tf.train.load_checkpoint(str(prefix))
    by_value: dict[tuple[str, ...], list[str]] = {}
    for key in reader.get_variable_to_shape_map():
        if key == "_CHECKPOINTABLE_OBJECT_GRAPH":
            continue
        value = np.asarray(reader.get_tensor(key))
        digest = (hashlib.sha256(value.tobytes()).hexdigest(), str(value.dtype), str(value.shape))
        by_value.setdefault(digest, []).append(key)
    truth: dict[str, str] = {}
    used: dict[str, int] = {}
    for layer in model.layers:
        kind = type(layer).__name__
        base = SNAKE[kind]
        count = used.get(base, 0)
        used[base] = count + 1
        if kind not in KERAS3_ORDER:
            continue
        key_name = base if count == 0 else f"{base}_{count}"
        variables = {v.name.split("/")[-1].split(":")[0]: v for v in layer.weights}
        for index, var_name in enumerate(KERAS3_ORDER[kind]):
            value = np.asarray(variables[var_name].numpy())
            digest = (hashlib.sha256(value.tobytes()).hexdigest(), str(value.dtype),
                      str(value.shape))
            keys = by_value.get(digest, [])
            if len(keys) != 1:
                raise SystemExit(f"{key_name}/{var_name}: {len(keys)} checkpoint keys match")
            truth[f"layers/{key_name}/vars/{index}"] = keys[0]
    truth_path.write_text(json.dumps(truth, indent=1) + "\n")


def largest_tensor_bytes() -> int:
    """The largest Dense kernel of ``LAYERS`` (float32)."""
    largest, width = 0, INPUT_DIM
    for kind, units in LAYERS:
        if kind == "Dense":
            largest, width = max(largest, width * units * 4), units
    return largest


# --- measuring ------------------------------------------------------------------------------


def measure(prefix: Path, repeat: int, work: Path, with_import: bool) -> dict[str, Series]:
    baseline_out = work / "baseline.h5"
    # What each writes: deleted (untimed) before its own run, so every run writes new files
    # and frees none; the last round's outputs are left for ``check``.
    outputs = {"baseline": (baseline_out,), "ckptctl": outputs_of(prefix), "tf_import": ()}
    commands = {
        "baseline": [PYTHON, "-c", BASELINE, str(prefix), str(baseline_out)],
        "ckptctl": [ckptctl_exe(), "convert", "--checkpoint", str(prefix), "--force"],
    }
    if with_import:
        commands["tf_import"] = [PYTHON, "-c", TF_IMPORT]
    series = {name: Series(name) for name in commands}
    names = list(commands)
    for rep in range(repeat + 1):  # rep 0 is the warm-up of each (fills the bytecode cache)
        order = names[rep % len(names):] + names[:rep % len(names)]
        line = []
        for name in order:
            for output in outputs[name]:
                output.unlink(missing_ok=True)
            os.sync()  # no run pays for write-back of the previous one's dirty pages
            run = run_process(commands[name])
            missing = [p.name for p in outputs[name] if not p.exists()]
            if missing:
                raise SystemExit(f"{name} did not write {', '.join(missing)}")
            if rep:
                series[name].runs.append(run)
            line.append(f"{name} {run.seconds:.2f}s {run.max_rss_bytes / MB:.0f}MiB")
        log(f"  {'warm-up' if rep == 0 else f'rep {rep}'}: " + ", ".join(line))
    return series


def outputs_of(prefix: Path) -> tuple[Path, Path]:
    """ckptctl's weights file and sidecar for ``prefix`` (the stem drops ``.ckpt``)."""
    stem = prefix.name.removesuffix(".ckpt")
    return prefix.parent / f"{stem}.weights.h5", prefix.parent / f"{stem}.metadata.yaml"


def check(prefix: Path, truth: Path, work: Path) -> dict[str, Any]:
    """Both outputs of the last round against the source (a process of its own, untimed)."""
    out = work / "check.json"
    with open(out, "wb") as handle:
        run_process([PYTHON, "-c", CHECK, str(prefix), str(truth), str(outputs_of(prefix)[0]),
                     str(work / "baseline.h5")], stdout=handle, measured=False)
    result = json.loads(out.read_text())
    out.unlink()
    if result["problems"]:
        raise SystemExit("converted files are wrong: " + "; ".join(result["problems"]))
    return result


def phases(prefix: Path, runs: int = 3) -> dict[str, Any]:
    """Phase times of ``runs`` in-process reconversions, median of each phase."""
    out = prefix.parent / "phases.json"
    samples = []
    for _ in range(runs):
        os.sync()
        with open(out, "wb") as handle:
            run_process([PYTHON, "-c", PHASES, str(prefix)], stdout=handle)
        samples.append(json.loads(out.read_text()))
        out.unlink()
    keys = list(dict.fromkeys(k for sample in samples for k in sample["seconds"]))
    median = {k: round(statistics.median(s["seconds"].get(k, 0.0) for s in samples), 3)
              for k in keys}
    return {"seconds": median, "calls": samples[-1]["calls"], "checks": samples[-1]["checks"],
            "missing": samples[-1]["missing"]}


def run_variant(flavour: str, repeat: int, work: Path, with_import: bool) -> dict[str, Any]:
    if flavour == "keras2":
        prefix = work / "keras2" / "bigmodel.ckpt"
    else:
        prefix = work / "manager" / "ckpts" / "ckpt-12"
    prefix.parent.mkdir(parents=True)
    truth = work / f"{flavour}-truth.json"
    log(f"tf_convert: building the {flavour} checkpoint (~560 MB) ...")
    run_process([PYTHON, __file__, "--write-source", str(prefix), "--flavour", flavour,
                 "--truth", str(truth)], measured=False)
    files = sorted(p for p in prefix.parent.iterdir() if p.name.startswith(prefix.name + "."))
    size = sum(p.stat().st_size for p in files)
    largest = largest_tensor_bytes()
    log(f"tf_convert: {flavour}: {size / 1e9:.2f} GB in {len(files)} files; timing x{repeat} ...")
    series = measure(prefix, repeat, work, with_import)
    checked = check(prefix, truth, work)
    log(f"tf_convert: {flavour}: {checked['equal']} datasets equal to the source, "
        f"baseline wrote {checked['baseline_datasets']}")
    (work / "baseline.h5").unlink(missing_ok=True)
    breakdown = phases(prefix)
    weights_size = outputs_of(prefix)[0].stat().st_size
    result = summarize(series, size, weights_size, largest, repeat)
    result.update(flavour=flavour, files=[p.name for p in files], check=checked,
                  phases=breakdown)
    return result


def run(repeat: int = 5, keep: bool = False,
        variants: tuple[str, ...] = VARIANTS) -> dict[str, Any]:
    work = fresh_dir(WORK / "tf_convert")
    try:
        results = {}
        for i, flavour in enumerate(variants):
            results[flavour] = run_variant(flavour, repeat, work, with_import=i == 0)
            if not keep:  # one variant's ~2 GB at a time
                for child in list(work.iterdir()):
                    if child.is_dir():
                        remove_work(child)
        return {"variants": results,
                "all_met": all(r["speed_target_met"] and r["rss_target_met"]
                               for r in results.values())}
    finally:
        if not keep:
            remove_work(work)


def summarize(series: dict[str, Series], size: int, weights_size: int, largest: int,
              repeat: int) -> dict[str, Any]:
    ours, base = series["ckptctl"], series["baseline"]
    speedup = base.seconds / ours.seconds
    rss_ratio = ours.max_rss_bytes / base.max_rss_bytes
    return {
        "source_bytes": size, "weights_bytes": weights_size, "largest_tensor_bytes": largest,
        "repeat": repeat,
        "median_seconds": {k: round(s.seconds, 3) for k, s in series.items()},
        "median_cpu_seconds": {k: round(s.cpu_seconds, 3) for k, s in series.items()},
        "all_seconds": {k: s.all_seconds for k, s in series.items()},
        "median_max_rss_mib": {k: round(s.max_rss_bytes / MB, 1) for k, s in series.items()},
        "max_rss_all_mib": {k: [round(r.max_rss_bytes / MB) for r in s.runs]
                            for k, s in series.items()},
        "throughput_mb_s": {k: round(size / s.seconds / 1e6, 1) for k, s in series.items()
                            if k != "tf_import"},
        "speedup": round(speedup, 3),
        # median over rounds of baseline time / ckptctl time in the same round
        "speedup_paired": round(1.0 / ours.paired_ratio(base), 3),
        "rss_ratio": round(rss_ratio, 3),
        "rss_ratio_worst": round(max(r.max_rss_bytes for r in ours.runs)
                                 / min(r.max_rss_bytes for r in base.runs), 3),
        "speed_target_met": speedup >= TARGET_SPEEDUP,
        "rss_target_met": rss_ratio <= TARGET_RSS_RATIO,
    }


# --- report ---------------------------------------------------------------------------------

DESCRIPTION = {
    "keras2": "tf_keras (Keras 2) Sequential, `model.save_weights(\"bigmodel.ckpt\")`",
    "manager": "Keras 3 Sequential in `tf.train.Checkpoint(model, optimizer, epoch)`, "
               "`CheckpointManager.save()` -> `ckpts/ckpt-12`",
}
LABELS = {
    "baseline": "baseline: `tf.train.load_checkpoint` + `get_tensor` -> h5py, one dataset each",
    "tf_import": "`python -c \"import tensorflow, h5py\"` (information)",
    "ckptctl": "`ckptctl convert --checkpoint PREFIX --force`",
}


def summary_rows(result: dict[str, Any]) -> list[list[str]]:
    """Target rows for run_all's summary table, one pair per variant."""
    rows = []
    for flavour, r in result["variants"].items():
        secs, rss = r["median_seconds"], r["median_max_rss_mib"]
        rows.append([f"TF convert ({flavour}, {r['source_bytes'] / 1e6:.0f} MB): baseline time / "
                     "ckptctl time", f">= {TARGET_SPEEDUP:.0f}",
                     f"{r['speedup']:.2f} ({secs['baseline']:.2f} s vs {secs['ckptctl']:.2f} s;"
                     f" paired {r['speedup_paired']:.2f})", verdict(r["speed_target_met"])])
        rows.append([f"TF convert ({flavour}): ckptctl peak RSS / baseline peak RSS",
                     f"<= {TARGET_RSS_RATIO}",
                     f"{r['rss_ratio']:.2f} ({rss['ckptctl']:.0f} vs {rss['baseline']:.0f} MiB)",
                     verdict(r["rss_target_met"])])
    return rows


def report_variant(r: dict[str, Any]) -> str:
    size = r["source_bytes"]
    secs, cpu, rss = r["median_seconds"], r["median_cpu_seconds"], r["median_max_rss_mib"]
    rows = []
    for k, label in LABELS.items():
        if k not in secs:
            continue
        speed = "-" if k == "ckptctl" else f"{secs[k] / secs['ckptctl']:.2f}"
        paired = "-"
        if k != "ckptctl":
            ours = r["all_seconds"]["ckptctl"]
            theirs = r["all_seconds"][k]
            paired = f"{statistics.median(a / b for a, b in zip(theirs, ours, strict=True)):.2f}"
        mbs = f"{r['throughput_mb_s'][k]:.0f}" if k in r["throughput_mb_s"] else "-"
        rows.append([label, f"{secs[k]:.2f}", f"{cpu[k]:.2f}", mbs, speed, paired,
                     f"{rss[k]:.0f}", "-" if k == "ckptctl" else f"{rss['ckptctl'] / rss[k]:.2f}"])
    phase = r["phases"]
    phase_rows = [[k, f"{v:.3f}", str(phase["calls"].get(k, ""))]
                  for k, v in phase["seconds"].items()]
    checked = r["check"]
    parts = [
        f"TF convert, {r['flavour']}: {DESCRIPTION[r['flavour']]}; source {size / 1e6:.0f} MB "
        f"({size} bytes: {', '.join(r['files'])}), largest tensor "
        f"{r['largest_tensor_bytes'] / MB:.0f} MiB; ckptctl's weights file "
        f"{r['weights_bytes'] / 1e6:.0f} MB. {r['repeat']} timed rounds after one warm-up round, "
        f"the {len(secs)} processes in turn (rotating order) each round",
        markdown_table(["process", "wall s", "CPU s", "MB/s (source)", "time / ckptctl's",
                        "time / ckptctl's, paired", "peak RSS MiB", "ckptctl's RSS / this"],
                       rows),
        "wall s, CPU s (user + system), peak RSS: medians; paired: median of the per-round "
        "ratios (same round, same machine load).",
        f"Check (separate process, after the timed rounds): {checked['equal']} of "
        f"{checked['datasets']} datasets of ckptctl's Keras 3 file equal, bit for bit, "
        f"`reader.get_tensor` of their source variable; the baseline wrote all "
        f"{checked['baseline_datasets']} variables.",
        f"Target: ckptctl >= {TARGET_SPEEDUP:.0f} x faster: {r['speedup']:.2f} x (paired "
        f"{r['speedup_paired']:.2f}), {verdict(r['speed_target_met'])}.",
        f"Target: ckptctl peak RSS <= {TARGET_RSS_RATIO} x baseline: {r['rss_ratio']:.2f} "
        f"({rss['ckptctl']:.0f} vs {rss['baseline']:.0f} MiB; worst ckptctl run / best "
        f"baseline run {r['rss_ratio_worst']:.2f}), {verdict(r['rss_target_met'])}.",
        "ckptctl phases (3 extra runs in-process, reconversions over existing outputs, median "
        "wall seconds; `[thread]` rows run on hash threads and overlap the main thread's; "
        "\"of which\" rows are parts of the row above them; calls in the last run):",
        markdown_table(["phase", "s", "calls"], phase_rows),
    ]
    if phase["checks"]:
        parts.append("(" + "; ".join(f"{k}: {v}" for k, v in phase["checks"].items()) + ".)")
    if phase["missing"]:
        parts.append(f"(Product functions not found for timing: {', '.join(phase['missing'])}.)")
    return "\n\n".join(parts)


def report(result: dict[str, Any]) -> str:
    return "\n\n".join(report_variant(r) for r in result["variants"].values())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help="comma-separated, of: " + ", ".join(VARIANTS))
    parser.add_argument("--keep", action="store_true", help="keep benchmarks/_work/tf_convert")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--write-source", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--flavour", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--truth", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.write_source:
        write_source(args.write_source, args.flavour, args.truth)
        return 0
    variants = tuple(v for v in args.variants.split(",") if v)
    if not variants or set(variants) - set(VARIANTS):
        parser.error(f"--variants: choose from {', '.join(VARIANTS)}")
    result = run(args.repeat, args.keep, variants)
    print(report(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if result["all_met"] else 1


if __name__ == "__main__":
    sys.exit(main())
