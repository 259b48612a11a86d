"""``ckptctl.readers.tfevents`` against event files written by ``torch.utils.tensorboard``,
TensorFlow 2's ``tf.summary`` (in a subprocess, so collection stays light) and Lightning's
``TensorBoardLogger``; values are compared with what each library logged. Then hostile
files, each test named for the attack it stops."""

from __future__ import annotations

import csv
import json
import os
import struct
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import google_crc32c
import numpy as np
import pytest

from ckptctl.errors import BudgetExceededError, CkptError, CorruptCheckpointError
from ckptctl.readers import tfevents as tfe

torch = pytest.importorskip("torch")
pytest.importorskip("tensorboard")


def f32(value: float) -> float:
    return float(np.float32(value))


# --- fixtures written by the real libraries ------------------------------------------------


@pytest.fixture(scope="module")
def torch_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """torch.utils.tensorboard.SummaryWriter: scalars (old and new style), a step logged
    twice, and images, histograms, text and a graph that must be skipped."""
    from torch.utils.tensorboard import SummaryWriter

    folder = tmp_path_factory.mktemp("torch_tb")
    logged: dict[tuple[str, int], float] = {}
    writer = SummaryWriter(log_dir=str(folder))
    gen = np.random.default_rng(0)
    for step in range(6):
        loss = float(gen.random())
        writer.add_scalar("train/loss", loss, step)
        logged[("train/loss", step)] = f32(loss)
        writer.add_scalar("lr", 0.1 / (step + 1), step, new_style=True)
        logged[("lr", step)] = f32(0.1 / (step + 1))
        writer.add_image("img", gen.random((3, 16, 16)), step)
        writer.add_histogram("weights", gen.normal(size=200), step)
    writer.add_text("notes", "hello", 0)
    writer.add_scalar("train/loss", 9.5, 3)  # step 3 again: the last value wins
    logged[("train/loss", 3)] = 9.5
    writer.add_graph(torch.nn.Linear(3, 2), torch.zeros(1, 3))
    writer.close()
    (event_file,) = tfe.find_event_files(folder)
    return {"folder": folder, "file": event_file, "logged": logged}


_TF_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    import tensorflow as tf
    folder = sys.argv[1]
    writer = tf.summary.create_file_writer(folder)
    logged = []
    with writer.as_default():
        for step in range(5):
            value = 1.0 / (step + 1)
            tf.summary.scalar("val/acc", value, step=step)
            tf.summary.scalar("big_step", value * 2, step=step + 10**12)
            logged.append(["val/acc", step, float(np.float32(value))])
            logged.append(["big_step", step + 10**12, float(np.float32(value * 2))])
            tf.summary.histogram("hist", np.arange(10.0) * step, step=step)
            tf.summary.image("img", np.zeros((1, 4, 4, 3), np.float32), step=step)
            tf.summary.text("txt", "some text", step=step)
            tf.summary.write("raw_tensor", tf.constant([1.0, 2.0]), step=step)
    writer.close()
    print(json.dumps(logged))
""")


@pytest.fixture(scope="module")
def tf_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """TensorFlow 2's tf.summary (TF2 scalars are rank-0 tensors with the "scalars" plugin)."""
    pytest.importorskip("tensorflow")  # only checks that it is installed: not imported here
    folder = tmp_path_factory.mktemp("tf_tb")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run([sys.executable, "-c", _TF_SCRIPT, str(folder)], env=env,
                          capture_output=True, text=True, timeout=300, check=True)
    logged = {(tag, step): value for tag, step, value in
              json.loads(done.stdout.strip().splitlines()[-1])}
    return {"folder": folder, "logged": logged}


@pytest.fixture(scope="module")
def lightning_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A tiny Lightning Trainer on CPU with TensorBoardLogger and CSVLogger side by side: the
    CSV file is the library's own record of what was logged."""
    import lightning as L
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    class Tiny(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(4, 1)

        def training_step(self, batch: Any, batch_idx: int) -> Any:
            x, y = batch
            loss = torch.nn.functional.mse_loss(self.layer(x), y)
            self.log("train_loss", loss)
            return loss

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            x, y = batch
            self.log("val_loss", torch.nn.functional.mse_loss(self.layer(x), y))

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.1)

    torch.manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(32, 4), torch.randn(32, 1))
    loader = torch.utils.data.DataLoader(data, batch_size=4)
    root = tmp_path_factory.mktemp("lightning")
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", log_every_n_steps=1,
                        logger=[TensorBoardLogger(root, name="lightning_logs"),
                                CSVLogger(root, name="csv")],
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    trainer.fit(Tiny(), loader, loader)
    logged: dict[tuple[str, int], float] = {}
    (metrics_csv,) = (root / "csv").rglob("metrics.csv")
    with metrics_csv.open() as handle:
        for row in csv.DictReader(handle):
            for tag, cell in row.items():
                if tag != "step" and cell:
                    logged[(tag, int(row["step"]))] = f32(float(cell))
    return {"version": root / "lightning_logs" / "version_0", "logged": logged}


def _as_dict(log: tfe.ScalarLog) -> dict[tuple[str, int], float]:
    return {(tag, step): s.value for tag, steps in log.points.items() for step, s in steps.items()}


# --- what the libraries wrote ----------------------------------------------------------------


def test_torch_summary_writer_scalars(torch_run: dict[str, Any]) -> None:
    log = tfe.read_scalars(torch_run["file"])
    assert _as_dict(log) == torch_run["logged"]  # images, histograms, text, graph skipped
    assert log.truncated == [] and log.oversized_skipped == 0
    assert log.last("train/loss") == log.series("train/loss")[-1]
    assert log.at_step(3)["train/loss"] == 9.5
    series = log.series("lr")
    assert [s.step for s in series] == list(range(6))
    assert all(s.wall_time > 1e9 for s in series)


def test_iter_scalars_yields_every_value_including_repeats(torch_run: dict[str, Any]) -> None:
    report = tfe.ReadReport(torch_run["file"])
    values = [s for s in tfe.iter_scalars(torch_run["file"], report=report)
              if s.tag == "train/loss" and s.step == 3]
    assert len(values) == 2 and values[-1].value == 9.5
    assert report.file_version == "brain.Event:2"
    assert report.bytes_read == torch_run["file"].stat().st_size


def test_tags_filter(torch_run: dict[str, Any]) -> None:
    log = tfe.read_scalars(torch_run["file"], tags={"lr"})
    assert log.tags() == ["lr"]


def test_tensorflow_tf_summary_scalars(tf_run: dict[str, Any]) -> None:
    log = tfe.read_scalars_dir(tf_run["folder"])
    assert _as_dict(log) == tf_run["logged"]  # histogram/image/text/raw tensor skipped
    assert log.files and log.truncated == []


def test_lightning_tensorboard_logger_matches_its_csv(lightning_run: dict[str, Any]) -> None:
    log = tfe.read_scalars_dir(lightning_run["version"])
    got = _as_dict(log)
    assert {"train_loss", "val_loss", "epoch"} <= set(log.tags())
    for key, value in lightning_run["logged"].items():
        assert got[key] == value, key
    assert len([k for k in got if k[0] == "val_loss"]) == 2  # one per epoch


def test_folder_order_and_last_value_across_files(tmp_path: Path) -> None:
    from torch.utils.tensorboard import SummaryWriter

    for run, value in (("b_run", 2.0), ("a_run", 1.0)):
        writer = SummaryWriter(log_dir=str(tmp_path / "runs" / run),
                               filename_suffix=f".{run}")
        writer.add_scalar("loss", value, 7)
        writer.close()
    files = tfe.find_event_files(tmp_path / "runs")
    assert len(files) == 2 and [p.name for p in files] == sorted(p.name for p in files)
    log = tfe.read_scalars_dir(tmp_path / "runs")
    assert log.at_step(7)["loss"] == {"a_run": 1.0, "b_run": 2.0}[files[-1].parent.name]
    assert tfe.find_event_files(tmp_path / "runs", max_depth=0) == []
    assert log.files == files


# --- hostile files ---------------------------------------------------------------------------


def _record(data: bytes) -> bytes:
    def masked(raw: bytes) -> bytes:
        return struct.pack("<I", tfe.mask_crc(int(google_crc32c.value(raw))))

    length = struct.pack("<Q", len(data))
    return length + masked(length) + data + masked(data)


def _offsets(path: Path) -> list[int]:
    raw = path.read_bytes()
    out, pos = [], 0
    while pos < len(raw):
        out.append(pos)
        pos += 16 + struct.unpack("<Q", raw[pos:pos + 8])[0]
    return out


def test_bad_crc_mid_file_is_corrupt_and_names_the_offset(torch_run: dict[str, Any],
                                                          tmp_path: Path) -> None:
    raw = bytearray(torch_run["file"].read_bytes())
    third = _offsets(torch_run["file"])[2]
    raw[third + 12] ^= 0xFF  # first data byte of the third record
    path = tmp_path / "events.out.tfevents.1.bad"
    path.write_bytes(raw)
    with pytest.raises(CorruptCheckpointError, match=f"byte {third} fails its data crc32c"):
        tfe.read_scalars(path)


def test_bad_length_crc_cannot_desynchronise_framing(torch_run: dict[str, Any],
                                                     tmp_path: Path) -> None:
    raw = bytearray(torch_run["file"].read_bytes())
    second = _offsets(torch_run["file"])[1]
    raw[second] ^= 0x01
    path = tmp_path / "events.out.tfevents.1.bad"
    path.write_bytes(raw)
    with pytest.raises(CorruptCheckpointError, match=f"record at byte {second} fails"):
        tfe.read_scalars(path)


def test_truncated_tail_of_a_file_being_written_ends_cleanly(torch_run: dict[str, Any],
                                                             tmp_path: Path) -> None:
    raw = torch_run["file"].read_bytes()
    offsets = _offsets(torch_run["file"])
    whole = tfe.read_scalars(torch_run["file"])
    for cut in (offsets[-1] + 5, offsets[-1] + 14, len(raw) - 1):
        path = tmp_path / f"events.out.tfevents.{cut}"
        path.write_bytes(raw[:cut])
        log = tfe.read_scalars(path)
        assert log.truncated == [path]
        assert log.records == whole.records - 1


def test_huge_declared_record_length_allocates_nothing(tmp_path: Path) -> None:
    length = struct.pack("<Q", 1 << 62)
    crc = struct.pack("<I", tfe.mask_crc(int(google_crc32c.value(length))))
    path = tmp_path / "events.out.tfevents.1.huge"
    path.write_bytes(_record(b"\x09" + struct.pack("<d", 1.0)) + length + crc + b"x" * 100)
    log = tfe.read_scalars(path)  # a record past the end: a truncated tail, nothing read
    assert log.truncated == [path] and log.records == 1 and len(log) == 0


def test_oversized_record_is_skipped_by_seeking(torch_run: dict[str, Any]) -> None:
    log = tfe.read_scalars(torch_run["file"], max_record_bytes=400)
    assert log.oversized_skipped > 0  # the images and histograms
    assert _as_dict(log) == torch_run["logged"]


def test_garbage_inside_a_valid_record_is_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "events.out.tfevents.1.garbage"
    path.write_bytes(_record(b"\x2a\xff\xff\xff\xff\x0f"))  # field 5 claims 4 GiB
    with pytest.raises(CorruptCheckpointError, match="byte 0 is not an Event"):
        tfe.read_scalars(path)


def test_wrong_wire_type_for_simple_value_is_corrupt(tmp_path: Path) -> None:
    value = b"\x0a\x01a" + b"\x10\x05"  # tag "a", simple_value as a varint
    summary = b"\x0a" + bytes([len(value)]) + value
    path = tmp_path / "events.out.tfevents.1.wire"
    path.write_bytes(_record(b"\x2a" + bytes([len(summary)]) + summary))
    with pytest.raises(CorruptCheckpointError, match="wire type"):
        tfe.read_scalars(path)


def test_huge_file_is_refused_before_reading(torch_run: dict[str, Any]) -> None:
    with pytest.raises(BudgetExceededError, match="event file"):
        tfe.read_scalars(torch_run["file"], max_bytes=1000)


def test_too_many_points_cannot_exhaust_memory(torch_run: dict[str, Any]) -> None:
    with pytest.raises(BudgetExceededError, match="distinct"):
        tfe.read_scalars(torch_run["file"], max_points=5)


def test_symlinked_event_file_and_folder_are_not_followed(torch_run: dict[str, Any],
                                                          tmp_path: Path) -> None:
    (tmp_path / "events.out.tfevents.9.link").symlink_to(torch_run["file"])
    (tmp_path / "linked_dir").symlink_to(torch_run["folder"], target_is_directory=True)
    assert tfe.find_event_files(tmp_path) == []


def test_fifo_named_like_an_event_file_cannot_block(tmp_path: Path) -> None:
    fifo = tmp_path / "events.out.tfevents.1.fifo"
    os.mkfifo(fifo)
    assert tfe.find_event_files(tmp_path) == []
    with pytest.raises(CkptError, match="not a regular file"):
        tfe.read_scalars(fifo)
