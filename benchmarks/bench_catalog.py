#!/usr/bin/env python
"""Benchmark ``ckptctl catalog`` over 10,000 sidecars in 1,000 experiment folders.

1. A few small but real checkpoints (``torch.save`` of model state dicts with epoch, metrics,
   optimizer state, a Hydra config and a CSVLogger ``metrics.csv`` beside them) are converted
   by the real ``ckptctl convert``. Their sidecars are the templates.
2. The templates are cloned into ``--experiments`` folders x ``--per-exp`` sidecars with varied
   ``exp_name``, ``training.epoch``/``global_step``, file names, hashes and metrics (learning
   curves: ``val/hmean`` rises, ``val/loss`` falls). Every clone goes through
   ``ckptctl.schema.Sidecar`` and the product's own YAML writer; a random sample is read back
   with ``ckptctl.sidecars.parse_sidecar`` (what ``ckptctl validate`` does first).
3. Timed as whole processes, interleaved, ``--repeat`` times, median reported:
   ``python -c pass`` (interpreter start-up), the naive baseline (walk the tree and
   ``yaml.load(f, Loader=yaml.CSafeLoader)`` every sidecar), ``ckptctl catalog ROOT --best
   val/hmean --format json`` cold (empty ``CKPTCTL_CACHE_DIR``), warm (cache from that cold
   run) and ``--no-cache``. The catalog's answer is checked against the generated truth.

Run: ``python benchmarks/bench_catalog.py [--experiments 1000 --per-exp 10 --repeat 5]``.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import math
import os
import random
import statistics
import sys
from pathlib import Path
from typing import Any

from _common import (
    PYTHON,
    WORK,
    Run,
    Series,
    ckptctl_exe,
    fresh_dir,
    log,
    markdown_table,
    remove_work,
    run_process,
    verdict,
)

TARGET_WARM_SECONDS = 1.0
METRIC = "val/hmean"
EPOCHS = 50

NAIVE_LOADER = r"""
import os, sys, yaml
n = 0
for folder, dirs, files in os.walk(sys.argv[1]):
    dirs.sort()
    for name in sorted(files):
        if name.endswith(".metadata.yaml"):
            with open(os.path.join(folder, name), "rb") as handle:
                yaml.load(handle, Loader=yaml.CSafeLoader)
            n += 1
print(n)
"""

# Phases of one ``ckptctl catalog`` run, in-process: the product's functions are wrapped with
# timers (in that child process only) and the real CLI entry point is called.
PHASES = r"""
import io, json, pathlib, sys, time
from collections import defaultdict
t0 = time.perf_counter()
import ckptctl.cli
t1 = time.perf_counter()
import ckptctl.cli.catalog
t2 = time.perf_counter()
from ckptctl.ops import catalog as ops
t3 = time.perf_counter()
heavy = sorted(m for m in ("pydantic", "numpy", "h5py", "torch", "rich") if m in sys.modules)
spent = defaultdict(float)
depth = [0]

missing = []

def timed(owner, attr, label):
    # Only the outermost timed call counts, so no time is counted twice. Internals move:
    # a function that is not there is listed as missing instead of failing the benchmark.
    original = getattr(owner, attr, None)
    if original is None:
        missing.append(f"{getattr(owner, '__name__', owner)}.{attr}")
        return
    def wrapper(*args, **kwargs):
        depth[0] += 1
        t = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            depth[0] -= 1
            if depth[0] == 0:
                spent[label] += time.perf_counter() - t
    setattr(owner, attr, wrapper)

timed(ops, "find_sidecars", "walk the tree (find_sidecars)")
timed(ops, "_read_cache", "read cache (json.load)")
timed(pathlib.Path, "absolute", "Path.absolute() of each sidecar (cache key)")
timed(pathlib.Path, "stat", "Path.stat() of each sidecar")
import ckptctl.sidecars as sidecars  # imported lazily by catalog on a cache miss only

timed(sidecars, "read_sidecar_raw", "read + parse YAML (read_sidecar_raw)")
timed(sidecars, "parse_sidecar", "schema check (pydantic, parse_sidecar)")
timed(ops, "_write_cache", "write cache (json.dump)")
timed(ckptctl.cli.catalog, "emit_json", "print JSON rows (emit_json)")
sys.stdout = io.StringIO()
t4 = time.perf_counter()
try:
    ckptctl.cli.main(["catalog", sys.argv[1], "--best", sys.argv[2], "--format", "json"])
except SystemExit:
    pass
t5 = time.perf_counter()
sys.stdout = sys.__stdout__
inside = t5 - t4
result = {"import click + ckptctl.cli": t1 - t0, "import ckptctl.cli.catalog": t2 - t1,
          "import ckptctl.ops.catalog": t3 - t2, **spent}
result["rest: cache compare, entries, selection, sorting"] = inside - sum(spent.values())
result["command total (after imports)"] = inside
print(json.dumps({"seconds": result, "heavy modules imported": heavy, "missing": missing}))
"""


# --- seed checkpoints, converted by the real ckptctl ---------------------------------------


def _curve(quality: float, tau: float, epoch: int, rng: random.Random) -> tuple[float, float]:
    """(hmean, loss) of a plausible learning curve at ``epoch``."""
    rise = 1.0 - math.exp(-(epoch + 1) / tau)
    hmean = min(0.999, max(0.0, quality * rise + rng.gauss(0, 0.008)))
    loss = max(0.01, 0.18 + 1.6 * math.exp(-(epoch + 1) / tau) + rng.gauss(0, 0.01))
    return round(hmean, 6), round(loss, 6)


def _write_metrics_csv(path: Path, epochs: int, steps_per_epoch: int, rng: random.Random) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["epoch,step,train/loss,val/hmean,val/loss,val/precision,val/recall"]
    for epoch in range(epochs):
        hmean, loss = _curve(0.86, 6.0, epoch, rng)
        lines.append(f"{epoch},{(epoch + 1) * steps_per_epoch - 1},{loss * 0.9:.6f},,,,")
        lines.append(f"{epoch},{(epoch + 1) * steps_per_epoch - 1},,{hmean},{loss},"
                     f"{min(1.0, hmean + 0.02):.6f},{max(0.0, hmean - 0.02):.6f}")
    path.write_text("\n".join(lines) + "\n")


def build_seeds(root: Path) -> list[Path]:
    """Three small experiments written with ``torch.save``; returns their checkpoint files."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    rng = random.Random(0)
    written: list[Path] = []

    # 1. OCR detector (DBNet-like), Hydra run folder, CSVLogger metrics, CLEval dict.
    exp = root / "dbnet_resnet18"
    (exp / ".hydra").mkdir(parents=True)
    (exp / ".hydra" / "config.yaml").write_text(
        "model:\n  _target_: ocr.models.DBNet\n  encoder: {name: resnet18, pretrained: true}\n"
        "  head: {name: db_head, k: 50}\n"
        "trainer: {max_epochs: 50, precision: 32}\n"
        "callbacks:\n  model_checkpoint:\n    monitor: val/hmean\n    mode: max\n"
        "    save_top_k: 3\n    save_last: true\n")
    _write_metrics_csv(exp / "logs" / "metrics.csv", 12, 125, rng)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                          nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                          nn.Conv2d(32, 1, 1))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(2, 3, 16, 16)).sum().backward()
    optimizer.step()
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=50)
    for epoch in (3, 7):
        hmean, _ = _curve(0.86, 6.0, epoch, rng)
        path = exp / "checkpoints" / f"epoch={epoch:02d}-step={(epoch + 1) * 125}.ckpt"
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"state_dict": model.state_dict(), "epoch": epoch,
                    "global_step": (epoch + 1) * 125,
                    "cleval_metrics": {"hmean": hmean, "precision": min(1.0, hmean + 0.02),
                                       "recall": max(0.0, hmean - 0.02)},
                    "optimizer": optimizer.state_dict(), "lr_scheduler": scheduler.state_dict()},
                   path)
        written.append(path)

    # 2. Lightning-shaped checkpoint (callback state with tensor scores, hyper_parameters).
    exp = root / "crnn_vgg_lstm"
    _write_metrics_csv(exp / "lightning_logs" / "version_0" / "metrics.csv", 8, 200, rng)
    (exp / "lightning_logs" / "version_0" / "hparams.yaml").write_text(
        "architecture: CRNN\nbackbone: vgg16_bn\nhidden_size: 256\nlr: 0.0005\n")
    model = nn.Sequential(nn.Conv1d(8, 32, 3), nn.LSTM(32, 32, batch_first=True))
    epoch = 5
    hmean, _ = _curve(0.8, 4.0, epoch, rng)
    name = f"epoch={epoch}-step={(epoch + 1) * 200}.ckpt"
    callback = "ModelCheckpoint{'monitor': 'val/hmean', 'mode': 'max', 'every_n_train_steps': 0, " \
               "'every_n_epochs': 1, 'train_time_interval': None}"
    path = exp / "checkpoints" / name
    path.parent.mkdir(parents=True)
    torch.save({"epoch": epoch, "global_step": (epoch + 1) * 200,
                "pytorch-lightning_version": "2.6.6", "state_dict": model.state_dict(),
                "loops": {"fit_loop": {"epoch_progress": {"current": {"completed": epoch}}}},
                "callbacks": {callback: {
                    "monitor": "val/hmean", "best_model_score": torch.tensor(hmean),
                    "best_model_path": str(path), "current_score": torch.tensor(hmean),
                    "best_k_models": {str(path): torch.tensor(hmean)}, "kth_best_model_path": "",
                    "last_model_path": "", "dirpath": str(path.parent)}},
                "optimizer_states": [{"state": {}, "param_groups": [{"lr": 5e-4}]}],
                "lr_schedulers": [{"last_epoch": epoch}],
                "hyper_parameters": {"architecture": "CRNN", "backbone": "vgg16_bn",
                                     "hidden_size": 256, "lr": 0.0005}}, path)
    written.append(path)

    # 3. Plain training dict named the way hand-written loops name them.
    exp = root / "resnet_cls"
    model = nn.Sequential(nn.Linear(64, 32), nn.LayerNorm(32), nn.Linear(32, 10))
    path = exp / "best_model_e12_valloss0.3112.pth"
    path.parent.mkdir(parents=True)
    torch.save({"model_state_dict": model.state_dict(), "epoch": 12, "best_val_loss": 0.3112,
                "val/hmean": 0.7310, "optimizer_state_dict": {"state": {}, "param_groups": []},
                "args": {"arch": "resnet_cls", "lr": 0.01, "batch_size": 64}}, path)
    written.append(path)
    return written


def convert_seeds(root: Path) -> list[dict[str, Any]]:
    """Write the seeds (in a child process: torch stays out of this one), run the real
    ``ckptctl convert`` on them and return the sidecar documents it wrote."""
    from ckptctl.sidecars import parse_sidecar, read_sidecar_raw

    run_process([PYTHON, __file__, "--write-seeds", str(root)], measured=False)
    run_process([ckptctl_exe(), "convert", "--outputs-dir", str(root)], measured=False)
    sidecars = sorted(root.rglob("*.metadata.yaml"))
    if len(sidecars) != 4:
        raise SystemExit(f"expected 4 seed sidecars, ckptctl convert wrote {len(sidecars)}")
    docs = []
    for sidecar in sidecars:
        parse_sidecar(sidecar)
        docs.append(read_sidecar_raw(sidecar))
    return docs


# --- cloning ---------------------------------------------------------------------------


def _metric_value(name: str, hmean: float, loss: float, rng: random.Random, old: float) -> float:
    lower = name.lower()
    if "hmean" in lower:
        return hmean
    if "precision" in lower:
        return round(min(1.0, hmean + rng.uniform(0.0, 0.04)), 6)
    if "recall" in lower:
        return round(max(0.0, hmean - rng.uniform(0.0, 0.04)), 6)
    if "loss" in lower:
        return round(loss * (0.9 if "train" in lower else 1.0), 6)
    return round(old * rng.uniform(0.9, 1.1), 6)


def clone_sidecars(root: Path, templates: list[dict[str, Any]], experiments: int, per_exp: int,
                   seed: int = 1) -> dict[str, float]:
    """Write the clones; returns the true best ``val/hmean`` per experiment."""
    from ckptctl.schema import Sidecar
    from ckptctl.sidecars import sidecar_yaml

    rng = random.Random(seed)
    start = dt.datetime(2026, 9, 1, tzinfo=dt.timezone.utc)
    best: dict[str, float] = {}
    for index in range(experiments):
        template = templates[index % len(templates)]
        arch = str((template.get("model") or {}).get("architecture") or "model").lower()
        lr = rng.choice(("1e-3", "5e-4", "3e-4", "1e-4"))
        exp_name = f"{arch}_lr{lr}_bs{rng.choice((8, 16, 32))}_run{index:04d}"
        day = start + dt.timedelta(minutes=47 * index)
        folder = root / day.strftime("%Y-%m-%d") / f"{day:%H-%M-%S}_{exp_name}" / "checkpoints"
        folder.mkdir(parents=True)
        quality, tau = rng.uniform(0.55, 0.93), rng.uniform(3.0, 12.0)
        steps_per_epoch = rng.choice((100, 125, 250, 400))
        epochs = sorted(rng.sample(range(EPOCHS), per_exp))
        suffix = Path(template["checkpoint_path"]).suffix or ".ckpt"
        for epoch in epochs:
            hmean, loss = _curve(quality, tau, epoch, rng)
            best[exp_name] = max(best.get(exp_name, -1.0), hmean)
            step = (epoch + 1) * steps_per_epoch
            stem = f"epoch={epoch:02d}-step={step}"
            doc = copy.deepcopy(template)
            doc["exp_name"] = exp_name
            doc["checkpoint_path"] = stem + suffix
            doc["weights_path"] = f"{stem}.weights.h5"
            created = day + dt.timedelta(minutes=11 * (epoch + 1))
            doc["created_at"] = created.isoformat(timespec="seconds")
            doc["source"]["mtime"] = created.timestamp() - 5.0
            doc["source"]["sha256"] = f"{rng.getrandbits(256):064x}"
            doc["source"]["size_bytes"] += rng.randrange(0, 64)
            if doc.get("weights"):
                doc["weights"]["sha256"] = f"{rng.getrandbits(256):064x}"
            training = doc.setdefault("training", {})
            training["epoch"] = epoch
            training["global_step"] = step
            metrics = {name: _metric_value(name, hmean, loss, rng, float(value))
                       for name, value in (doc.get("metrics") or {}).items()}
            metrics.setdefault(METRIC, hmean)
            metrics.setdefault("val/loss", loss)
            doc["metrics"] = metrics
            checkpointing = doc.get("checkpointing") or {}
            if checkpointing.get("monitor") == METRIC:
                checkpointing["score"] = hmean
                checkpointing["best_model_score"] = round(best[exp_name], 6)
            sidecar = Sidecar.model_validate(doc)  # every clone is a schema-valid sidecar
            (folder / f"{stem}.metadata.yaml").write_bytes(sidecar_yaml(sidecar))
    return best


def check_sample(root: Path, count: int, seed: int = 2) -> int:
    """``parse_sidecar`` (schema check, as ``ckptctl validate`` does) on a random sample."""
    from ckptctl.sidecars import parse_sidecar

    files = sorted(root.rglob("*.metadata.yaml"))
    for path in random.Random(seed).sample(files, min(count, len(files))):
        parse_sidecar(path)
    return len(files)


def check_answer(output: Path, truth: dict[str, float]) -> None:
    rows = json.loads(output.read_text())
    if len(rows) != len(truth):
        raise SystemExit(f"catalog returned {len(rows)} rows, expected {len(truth)}")
    values = [row["metrics"][METRIC] for row in rows]
    if values != sorted(values, reverse=True):
        raise SystemExit("catalog rows are not ordered best first")
    wrong = [r["exp_name"] for r in rows if abs(r["metrics"][METRIC] - truth[r["exp_name"]]) > 1e-9]
    if wrong:
        raise SystemExit(f"catalog picked a wrong best checkpoint for {len(wrong)} experiments")


# --- timing ----------------------------------------------------------------------------


def measure(root: Path, repeat: int, work: Path, truth: dict[str, float]) -> dict[str, Series]:
    exe = ckptctl_exe()
    catalog_cmd = [exe, "catalog", str(root), "--best", METRIC, "--format", "json"]
    series = {name: Series(name) for name in
              ("startup", "naive", "cold", "warm", "no_cache")}
    output = work / "catalog.json"
    for rep in range(repeat + 1):  # rep 0 warms the page cache and checks the answer
        cache = fresh_dir(work / f"cache-{rep}")
        env = {**os.environ, "CKPTCTL_CACHE_DIR": str(cache)}
        runs: dict[str, Run] = {}
        runs["startup"] = run_process([PYTHON, "-c", "pass"])
        runs["naive"] = run_process([PYTHON, "-c", NAIVE_LOADER, str(root)])
        with open(output, "wb") as out:
            runs["cold"] = run_process(catalog_cmd, env=env, stdout=out)
        if rep == 0:
            check_answer(output, truth)
        with open(output, "wb") as out:
            runs["warm"] = run_process(catalog_cmd, env=env, stdout=out)
        if rep == 0:
            check_answer(output, truth)
        with open(output, "wb") as out:
            runs["no_cache"] = run_process([*catalog_cmd, "--no-cache"], env=env, stdout=out)
        if rep == 0:
            check_answer(output, truth)
        else:
            for name, run in runs.items():
                series[name].runs.append(run)
        log(f"  {'warm-up' if rep == 0 else f'rep {rep}'}: "
            + ", ".join(f"{k} {v.seconds:.3f}s" for k, v in runs.items()))
    return series


def phases(root: Path, work: Path) -> tuple[dict[str, dict[str, float]], list[str], list[str]]:
    """Where a cold and a warm catalog spend their time (median of 3 runs each)."""
    result = {}
    heavy: list[str] = []
    missing: list[str] = []
    for mode in ("cold", "warm"):
        samples = []
        cache = fresh_dir(work / "phase-cache")
        env = {**os.environ, "CKPTCTL_CACHE_DIR": str(cache)}
        for _ in range(3):
            if mode == "cold":
                fresh_dir(cache)
            else:  # a cache written by the real command
                run_process([ckptctl_exe(), "catalog", str(root), "--best", METRIC], env=env)
            out = work / "phases.json"
            with open(out, "wb") as handle:
                run_process([PYTHON, "-c", PHASES, str(root), METRIC], env=env, stdout=handle)
            data = json.loads(out.read_text())
            samples.append(data["seconds"])
            heavy, missing = data["heavy modules imported"], data["missing"]
        result[mode] = {key: statistics.median(s[key] for s in samples) for key in samples[0]}
    return result, heavy, missing


def run(experiments: int = 1000, per_exp: int = 10, repeat: int = 5, keep: bool = False) -> dict[str, Any]:
    work = fresh_dir(WORK / "catalog")
    try:
        log(f"catalog: converting seed checkpoints with {ckptctl_exe()} ...")
        templates = convert_seeds(work / "seeds")
        log(f"catalog: writing {experiments * per_exp} sidecars in {experiments} experiment folders ...")
        root = work / "outputs"
        truth = clone_sidecars(root, templates, experiments, per_exp)
        total = check_sample(root, 200)
        disk = sum(p.stat().st_size for p in root.rglob("*.metadata.yaml"))
        log(f"catalog: {total} sidecars, {disk / total:.0f} bytes each; timing x{repeat} ...")
        series = measure(root, repeat, work, truth)
        breakdown, heavy, missing = phases(root, work)
        result = summarize(series, total, experiments, disk, breakdown, heavy, repeat)
        result["phase_hooks_missing"] = missing
        return result
    finally:
        if not keep:
            remove_work(work)


def summarize(series: dict[str, Series], total: int, experiments: int, disk: int,
              breakdown: dict[str, dict[str, float]], heavy: list[str],
              repeat: int) -> dict[str, Any]:
    naive = series["naive"].seconds
    result: dict[str, Any] = {
        "sidecars": total, "experiments": experiments, "mean_sidecar_bytes": round(disk / total),
        "repeat": repeat,
        "median_seconds": {k: round(s.seconds, 4) for k, s in series.items()},
        "median_cpu_seconds": {k: round(s.cpu_seconds, 4) for k, s in series.items()},
        "all_seconds": {k: s.all_seconds for k, s in series.items()},
        "median_max_rss_mib": {k: round(s.max_rss_bytes / 2**20, 1) for k, s in series.items()},
        "ms_per_sidecar": {k: round(1000 * s.seconds / total, 4) for k, s in series.items()},
        "ratio_vs_naive": {k: round(s.seconds / naive, 3) for k, s in series.items()},
        "paired_ratio_vs_naive": {k: round(s.paired_ratio(series["naive"]), 3)
                                  for k, s in series.items()},
        "phases_seconds": {mode: {k: round(v, 4) for k, v in phases.items()}
                           for mode, phases in breakdown.items()},
        "modules_imported_by_catalog": heavy,
        "target_warm_seconds": TARGET_WARM_SECONDS,
    }
    result["warm_target_met"] = series["warm"].seconds < TARGET_WARM_SECONDS
    return result


def report(result: dict[str, Any]) -> str:
    labels = {
        "startup": "`python -c pass` (start-up)",
        "naive": "naive: walk + `yaml.load(CSafeLoader)` each sidecar",
        "cold": "`ckptctl catalog --best val/hmean --format json`, cold cache",
        "warm": "same, warm cache",
        "no_cache": "same, `--no-cache`",
    }
    rows = [[label, f"{result['median_seconds'][k]:.3f}", f"{result['median_cpu_seconds'][k]:.3f}",
             f"{result['ms_per_sidecar'][k]:.4f}", f"{result['ratio_vs_naive'][k]:.2f}",
             f"{result['paired_ratio_vs_naive'][k]:.2f}", f"{result['median_max_rss_mib'][k]:.0f}"]
            for k, label in labels.items()]
    head = (f"catalog: {result['sidecars']} sidecars (mean {result['mean_sidecar_bytes']} B) "
            f"in {result['experiments']} experiment folders; {result['repeat']} timed rounds "
            "after one warm-up round, the five processes in turn each round")
    warm = result["median_seconds"]["warm"]
    cold, warm_phases = result["phases_seconds"]["cold"], result["phases_seconds"]["warm"]
    keys = list(dict.fromkeys([*cold, *warm_phases]))
    keys.sort(key=lambda k: k.startswith(("rest", "command total")))  # stable: those last
    phases_rows = [[k, *(f"{p[k]:.3f}" if k in p else "-" for p in (cold, warm_phases))]
                   for k in keys]
    return "\n\n".join([
        head,
        markdown_table(["process", "wall s", "CPU s", "wall ms / sidecar", "x naive",
                        "x naive, paired", "peak RSS MiB"], rows),
        "wall s, CPU s (user + system): medians; x naive: ratio of the medians; x naive, "
        "paired: median of the per-round ratios (same round, same machine load).",
        f"Target: warm catalog of {result['sidecars']} sidecars < {TARGET_WARM_SECONDS:.0f} s: "
        f"{warm:.3f} s (median wall time), {verdict(result['warm_target_met'])}.",
        "Catalog phases, in-process with the product's functions timed (median of 3, seconds; "
        "heavy modules imported: " + (", ".join(result["modules_imported_by_catalog"]) or "none")
        + "):",
        markdown_table(["phase", "cold s", "warm s"], phases_rows),
        *([f"(Product functions not found for timing: {', '.join(result['phase_hooks_missing'])}.)"]
          if result.get("phase_hooks_missing") else []),
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiments", type=int, default=1000)
    parser.add_argument("--per-exp", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--keep", action="store_true", help="keep benchmarks/_work/catalog")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--write-seeds", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.write_seeds:
        build_seeds(args.write_seeds)
        return
    result = run(args.experiments, args.per_exp, args.repeat, args.keep)
    print(report(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
