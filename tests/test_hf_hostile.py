"""Hostile review of the Hugging Face / safetensors formats and the TensorBoard / W&B metric
sources. Each test builds the hostile file (with the real libraries where the base file
matters), runs the real CLI or reader, and asserts the SAFE behaviour. Named for the attack
it stops (``test_<attack>_...``); a failing test is an open finding."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import textwrap
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from helpers import outputs_exist, outputs_for, run_cli, run_process, sidecar_of
from safetensors.torch import load_file, save_file

from ckptctl.errors import CkptError

pytestmark = pytest.mark.xdist_group("hf_hostile")


def _convert(root: Path) -> Any:
    result = run_cli("convert", "--jobs", "1", "--outputs-dir", root)
    assert "Traceback" not in result.output
    assert "internal error" not in result.output, result.output
    return result


def _metrics(source: Path) -> dict[str, Any]:
    return sidecar_of(source).get("metrics") or {}


def _weights(source: Path) -> dict[str, np.ndarray]:
    import h5py

    out: dict[str, np.ndarray] = {}
    with h5py.File(outputs_for(source)[0], "r") as handle:
        handle.visititems(lambda name, obj: out.__setitem__(name, obj[()])
                          if isinstance(obj, h5py.Dataset) else None)
    return out


def _raw_safetensors(path: Path, header: dict[str, Any], data: bytes = b"") -> None:
    blob = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + data)


def _trainer_folder(folder: Path, state: dict[str, Any] | str,
                    tensors: dict[str, torch.Tensor] | None = None) -> Path:
    folder.mkdir(parents=True)
    save_file(tensors or {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3)},
              folder / "model.safetensors")
    (folder / "trainer_state.json").write_text(state if isinstance(state, str)
                                               else json.dumps(state))
    return folder


# --- Lightning: which logged values belong to a checkpoint ------------------------------------

_LIGHTNING = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    import torch, lightning as L
    from lightning.pytorch.callbacks import Callback, ModelCheckpoint
    from lightning.pytorch.loggers import TensorBoardLogger
    root = Path(sys.argv[1])
    class M(L.LightningModule):
        def __init__(self, lr=0.1):
            super().__init__(); self.save_hyperparameters(); self.lin = torch.nn.Linear(4, 1)
        def training_step(self, b, i):
            x, y = b; loss = torch.nn.functional.mse_loss(self.lin(x), y)
            self.log("train_loss", loss, on_step=True, on_epoch=False); return loss
        def validation_step(self, b, i):
            x, y = b; self.log("val_loss", torch.nn.functional.mse_loss(self.lin(x), y))
        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)
    def data(seed):
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(40, 4, generator=g); y = x.sum(1, keepdim=True)
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=4)
    class Order(Callback):  # proves the checkpoint file existed before validation started
        seen = {}
        def on_validation_start(self, trainer, module):
            ckdir = Path(trainer.log_dir) / "checkpoints"
            Order.seen[trainer.current_epoch] = sorted(p.name for p in ckdir.glob("*.ckpt"))
    out = {}
    exp = root / "mid"; L.seed_everything(0)
    t = L.Trainer(max_epochs=2, logger=TensorBoardLogger(exp, name="lightning_logs"),
                  log_every_n_steps=1, limit_val_batches=2, enable_progress_bar=False,
                  enable_model_summary=False, accelerator="cpu", num_sanity_val_steps=0,
                  callbacks=[ModelCheckpoint(every_n_train_steps=5, save_top_k=-1), Order()])
    t.fit(M(), data(0), data(1))
    out["seen_before_validation"] = Order.seen
    exp = root / "two"
    for i, lr in enumerate((0.5, 0.01)):
        L.seed_everything(i)
        t = L.Trainer(max_epochs=2, logger=TensorBoardLogger(exp, name="lightning_logs"),
                      log_every_n_steps=1, limit_val_batches=2, enable_progress_bar=False,
                      enable_model_summary=False, accelerator="cpu",
                      callbacks=[ModelCheckpoint(dirpath=exp / "ckpts" / f"run{i}",
                                                 save_top_k=-1)])
        t.fit(M(lr), data(0), data(1))
        out[f"run{i}_val_loss"] = float(t.callback_metrics["val_loss"])
    print(json.dumps(out))
""")


@pytest.fixture(scope="module")
def lightning_tree(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    pytest.importorskip("lightning")
    root = tmp_path_factory.mktemp("lt") / "outputs"
    root.mkdir()
    done = subprocess.run([sys.executable, "-c", _LIGHTNING, str(root)], capture_output=True,
                          text=True, timeout=600, check=True)
    info = json.loads(done.stdout.strip().splitlines()[-1])
    result = _convert(root)
    assert result.exit_code == 0, result.output
    return root, info


def _tb_values(folder: Path) -> dict[str, dict[int, float]]:
    from ckptctl.readers.tfevents import read_scalars_dir

    log = read_scalars_dir(folder, max_depth=0)
    return {tag: {s.step: s.value for s in log.series(tag)} for tag in log.tags()}


def test_mid_epoch_checkpoint_saved_before_validation_gets_no_val_loss(
        lightning_tree: tuple[Path, dict[str, Any]]) -> None:
    """Stops: ModelCheckpoint(every_n_train_steps=5) saves epoch=0-step=10.ckpt at the last
    training batch of epoch 0, BEFORE that epoch's validation runs; Lightning logs the
    validation at TensorBoard step 9 (< 10), so a 'values logged before step N' rule attaches
    a val_loss computed after the checkpoint was written (a wrong label)."""
    root, info = lightning_tree
    version = root / "mid" / "lightning_logs" / "version_0"
    # Lightning itself says the file was on disk before epoch 0's validation began
    assert "epoch=0-step=10.ckpt" in info["seen_before_validation"]["0"]
    logged = _tb_values(version)
    assert list(logged["val_loss"]) == [9, 19]  # validation of epoch 0 at step 9
    ckpt = version / "checkpoints" / "epoch=0-step=10.ckpt"
    metrics = _metrics(ckpt)
    assert "val_loss" not in metrics, (
        f"val_loss {metrics.get('val_loss')} was logged by the validation that ran after "
        f"{ckpt.name} was saved")
    # the mid-epoch one at step 5 gets the train loss of its own step at most
    early = _metrics(version / "checkpoints" / "epoch=0-step=5.ckpt")
    assert "val_loss" not in early
    assert early.get("train_loss") in (None, pytest.approx(logged["train_loss"][4], rel=1e-6))


def test_checkpoint_outside_logger_folder_gets_no_metrics_of_another_run(
        lightning_tree: tuple[Path, dict[str, Any]]) -> None:
    """Stops: two runs log to lightning_logs/version_0 and version_1 and save checkpoints
    under ckpts/run0, ckpts/run1 (ModelCheckpoint(dirpath=...)): both event folders are
    'equally near' a checkpoint, so run 0's val_loss is attached to run 1's checkpoint as
    'version_0/val_loss' (a metric of another run)."""
    root, info = lightning_tree
    metrics = _metrics(root / "two" / "ckpts" / "run1" / "epoch=1-step=20.ckpt")
    foreign = {k: v for k, v in metrics.items() if k.startswith("version_0/")}
    assert not foreign, f"run 0's values on run 1's checkpoint: {foreign}"
    for value in metrics.values():
        assert value != pytest.approx(info["run0_val_loss"], rel=1e-6)


def test_tensorboard_hparams_placeholder_is_not_a_metric(
        lightning_tree: tuple[Path, dict[str, Any]]) -> None:
    """Stops: Lightning's TensorBoardLogger writes hp_metric = -1 at step 0 as a placeholder
    for the hparams plugin; it is not a measurement of any checkpoint."""
    root, _ = lightning_tree
    for ckpt in (root / "mid").rglob("*.ckpt"):
        assert _metrics(ckpt).get("hp_metric") != -1.0, ckpt.name


# --- TensorBoard: a step axis that counts epochs -----------------------------------------------

def test_tensorboard_step_counting_epochs_is_not_matched_as_global_step(tmp_path: Path) -> None:
    """Stops: a plain PyTorch script logs writer.add_scalar('val/loss', v, epoch) (the step
    axis is the epoch) and saves {'epoch': 4, 'global_step': 50}; matching 'TB step ==
    global_step' labels the checkpoint with the val/loss of epoch 50."""
    from torch.utils.tensorboard import SummaryWriter

    exp = tmp_path / "outputs" / "plain"
    writer = SummaryWriter(str(exp / "runs"))
    for epoch in range(100):
        writer.add_scalar("val/loss", 1.0 / (epoch + 1), epoch)
    writer.close()
    (exp / "checkpoints").mkdir()
    ckpt = exp / "checkpoints" / "model_e4.pt"
    torch.save({"epoch": 4, "global_step": 50, "state_dict": {"w": torch.ones(3)}}, ckpt)
    assert _convert(tmp_path / "outputs").exit_code == 0
    metrics = _metrics(ckpt)
    assert metrics.get("val/loss") != pytest.approx(1.0 / 51, rel=1e-6), metrics


def _record(data: bytes) -> bytes:
    from ckptctl.readers.tfevents import _masked_crc

    head = struct.pack("<Q", len(data))
    return head + struct.pack("<I", _masked_crc(head)) + data + struct.pack("<I", _masked_crc(data))


def test_event_record_claiming_2_63_bytes_is_a_truncated_tail_not_a_crash(tmp_path: Path) -> None:
    """Stops: a record whose (crc-valid) length is 2**63 makes the reader allocate, seek to
    an absurd offset or raise an internal error; the checkpoint still converts."""
    exp = tmp_path / "outputs" / "exp"
    exp.mkdir(parents=True)
    head = struct.pack("<Q", 1 << 63)
    from ckptctl.readers.tfevents import _masked_crc

    (exp / "events.out.tfevents.1.host").write_bytes(
        head + struct.pack("<I", _masked_crc(head)) + b"x" * 64)
    ckpt = exp / "m.pt"
    torch.save({"epoch": 1, "global_step": 10, "state_dict": {"w": torch.ones(2)}}, ckpt)
    result = _convert(tmp_path / "outputs")
    assert result.exit_code == 0, result.output
    assert outputs_exist(ckpt) == (True, True)


# --- Hugging Face Trainer folders ----------------------------------------------------------------

def test_huge_integer_in_trainer_state_cannot_crash(tmp_path: Path) -> None:
    """Stops: trainer_state.json with an integer too large for a float (epoch, a logged loss,
    best_metric) raises OverflowError in float() -> 'internal error'."""
    big = "1" + "0" * 400
    state = (f'{{"global_step": 5, "epoch": {big}, "best_metric": {big}, '
             f'"log_history": [{{"step": 5, "loss": {big}, "eval_loss": 0.5}}]}}')
    folder = _trainer_folder(tmp_path / "outputs" / "exp" / "checkpoint-5", state)
    result = _convert(tmp_path / "outputs")
    assert result.exit_code in (0, 1), result.output
    assert outputs_exist(folder) == (True, True) or "trainer_state.json" in result.output


def test_nan_infinity_in_trainer_state_never_become_metrics(tmp_path: Path) -> None:
    """Stops: NaN/Infinity (which json.dumps writes) in log_history becoming a metric or
    best_metric, or crashing the sidecar writer."""
    state = {"global_step": 5, "epoch": 1.0, "best_metric": float("inf"),
             "log_history": [{"step": 5, "loss": float("nan"), "eval_loss": 0.25,
                              "eval_acc": float("-inf")}]}
    folder = _trainer_folder(tmp_path / "outputs" / "exp" / "checkpoint-5", json.dumps(state))
    assert _convert(tmp_path / "outputs").exit_code == 0
    side = sidecar_of(folder)
    assert side["metrics"] == {"eval_loss": 0.25}
    assert "best_model_score" not in (side.get("checkpointing") or {})


def test_trainer_state_step_contradicting_the_folder_name_is_not_trusted(tmp_path: Path) -> None:
    """Stops: checkpoint-500/ holding a trainer_state.json of step 1000 (copied from a later
    checkpoint): the Trainer names the folder after global_step, so the two disagreeing means
    the eval_loss 'at step 1000' is not this checkpoint's; it must not be recorded silently."""
    state = {"global_step": 1000, "epoch": 2.0,
             "log_history": [{"step": 500, "eval_loss": 0.9}, {"step": 1000, "eval_loss": 0.1}]}
    folder = _trainer_folder(tmp_path / "outputs" / "exp" / "checkpoint-500", state)
    result = _convert(tmp_path / "outputs")
    if not outputs_exist(folder)[1]:
        assert "checkpoint-500" in result.output  # refused, naming it: fine
        return
    side = sidecar_of(folder)
    conflicting = [c for c in side.get("conflicts") or [] if "global_step" in c.get("field", "")]
    assert side["training"].get("global_step") == 500 or conflicting, side
    assert side["metrics"].get("eval_loss") != 0.1 or conflicting, side


def test_malicious_training_args_never_runs_and_weights_still_convert(tmp_path: Path) -> None:
    """Stops: training_args.bin that runs os.system under torch.load. Decision: it is
    metadata only, so it is refused as data (never run) and the weights, which are
    safetensors and need no pickle, still convert, with a note saying why the args were
    not read."""
    marker = tmp_path / "PWNED"

    class Evil:
        def __reduce__(self) -> tuple[Any, ...]:
            return (os.system, (f"touch {marker}",))

    folder = _trainer_folder(tmp_path / "outputs" / "exp" / "checkpoint-5",
                             {"global_step": 5, "log_history": []})
    torch.save(Evil(), folder / "training_args.bin")
    result = run_cli("convert", "--jobs", "1", "-v", "--outputs-dir", tmp_path / "outputs")
    assert not marker.exists()
    assert result.exit_code == 0, result.output
    assert "training_args.bin" in result.output  # -v says why the arguments were not read
    side = sidecar_of(folder)
    assert "hyper_parameters" not in (side.get("model") or {})
    got = _weights(folder)
    assert [np.array_equal(v, np.arange(6, dtype=np.float32).reshape(2, 3))
            for v in got.values()] == [True]


def test_symlinked_trainer_weights_outside_the_tree_are_not_read(tmp_path: Path) -> None:
    """Stops: checkpoint-5/model.safetensors is a symlink to a file outside --outputs-dir:
    its bytes are read and converted (and, since the folder's file list skips symlinks,
    not even hashed into source.files)."""
    secret = tmp_path / "secret" / "model.safetensors"
    secret.parent.mkdir()
    save_file({"secret": torch.full((4,), 42.0)}, secret)
    folder = tmp_path / "outputs" / "exp" / "checkpoint-5"
    folder.mkdir(parents=True)
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": 5}))
    (folder / "model.safetensors").symlink_to(secret)
    _convert(tmp_path / "outputs")
    weights = outputs_for(folder)[0]
    assert not weights.exists() or 42.0 not in np.concatenate(
        [v.ravel() for v in _weights(folder).values()]), "the file outside the tree was read"


def test_trainer_weights_fifo_cannot_block(tmp_path: Path) -> None:
    """Stops: model.safetensors that is a FIFO next to trainer_state.json hanging convert."""
    folder = tmp_path / "outputs" / "exp" / "checkpoint-5"
    folder.mkdir(parents=True)
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": 5}))
    os.mkfifo(folder / "model.safetensors")
    (folder / "pytorch_model.bin").mkdir()  # a folder named like weights, too
    done = run_process("convert", "--jobs", "1", "--outputs-dir", tmp_path / "outputs")
    assert "Traceback" not in done.stderr + done.stdout
    assert done.returncode in (0, 1)


def test_trainer_folder_with_a_sharded_set_too_converts_what_transformers_loads(
        tmp_path: Path) -> None:
    """Stops: a Trainer folder holding model.safetensors AND a (stale) sharded set being
    converted from the set, or twice. transformers loads model.safetensors first."""
    folder = _trainer_folder(tmp_path / "outputs" / "exp" / "checkpoint-5",
                             {"global_step": 5}, {"w": torch.ones(3)})
    save_file({"w": torch.zeros(3)}, folder / "model-00001-of-00001.safetensors")
    (folder / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": 12}, "weight_map": {"w": "model-00001-of-00001.safetensors"}}))
    assert _convert(tmp_path / "outputs").exit_code == 0
    assert [v.tolist() for v in _weights(folder).values()] == [[1.0, 1.0, 1.0]]
    assert not outputs_exist(folder / "model.safetensors.index.json")[0]


def test_deeply_nested_log_history_is_one_clear_line(tmp_path: Path) -> None:
    """Stops: a log_history nested 100,000 levels deep crashing the JSON parser."""
    state = '{"global_step": 5, "log_history": ' + "[" * 100_000 + "]" * 100_000 + "}"
    folder = _trainer_folder(tmp_path / "outputs" / "exp" / "checkpoint-5", state)
    result = _convert(tmp_path / "outputs")
    assert result.exit_code in (0, 1)
    if not outputs_exist(folder)[1]:
        assert "trainer_state.json" in result.output


# --- sharded sets ---------------------------------------------------------------------------------

def _sharded(folder: Path) -> dict[str, torch.Tensor]:
    folder.mkdir(parents=True)
    a = {"a": torch.arange(4, dtype=torch.float32)}
    b = {"b": torch.arange(4, 8, dtype=torch.float32)}
    save_file(a, folder / "model-00001-of-00002.safetensors")
    save_file(b, folder / "model-00002-of-00002.safetensors")
    (folder / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": 32},
         "weight_map": {"a": "model-00001-of-00002.safetensors",
                        "b": "model-00002-of-00002.safetensors"}}))
    return {**a, **b}


def test_index_dropping_a_whole_shard_is_not_claimed_complete(tmp_path: Path) -> None:
    """Stops: an index whose weight_map lost every entry of shard 2 (total_size still 32,
    model-00002-of-00002.safetensors still on disk): the set converts 'complete' with half
    the model, and the orphaned shard is silently ignored."""
    folder = tmp_path / "outputs" / "exp" / "model"
    _sharded(folder)
    index = folder / "model.safetensors.index.json"
    doc = json.loads(index.read_text())
    del doc["weight_map"]["b"]
    index.write_text(json.dumps(doc))
    result = _convert(tmp_path / "outputs")
    assert not outputs_exist(index)[1], "a set missing a shard was converted as complete"
    assert "model.safetensors.index.json" in result.output


def test_symlinked_shard_outside_the_tree_is_not_read(tmp_path: Path) -> None:
    """Stops: a shard named by the index being a symlink to a file outside the tree."""
    folder = tmp_path / "outputs" / "exp" / "model"
    _sharded(folder)
    secret = tmp_path / "secret.safetensors"
    save_file({"b": torch.full((4,), 42.0)}, secret)
    shard = folder / "model-00002-of-00002.safetensors"
    shard.unlink()
    shard.symlink_to(secret)
    _convert(tmp_path / "outputs")
    index = folder / "model.safetensors.index.json"
    weights = outputs_for(index)[0]
    assert not weights.exists() or 42.0 not in np.concatenate(
        [v.ravel() for v in _weights(index).values()]), "a shard outside the tree was read"


def test_one_shard_under_two_names_is_refused(tmp_path: Path) -> None:
    """Stops: the index naming one file twice (a hard link under a second name): each tensor
    then sits in 'two shards'; refused in one line, nothing written."""
    folder = tmp_path / "outputs" / "exp" / "model"
    _sharded(folder)
    os.link(folder / "model-00001-of-00002.safetensors", folder / "copy-00001.safetensors")
    index = folder / "model.safetensors.index.json"
    doc = json.loads(index.read_text())
    doc["weight_map"]["a"] = "copy-00001.safetensors"
    index.write_text(json.dumps(doc))
    # 'a' is now claimed by both names; the original name stays a shard for nothing
    doc["weight_map"]["a2"] = "model-00001-of-00002.safetensors"
    index.write_text(json.dumps(doc))
    result = _convert(tmp_path / "outputs")
    assert not outputs_exist(index)[1]
    assert "model.safetensors.index.json" in result.output


def test_unicode_normalisation_twin_of_a_shard_name_is_missing(tmp_path: Path) -> None:
    """Stops: an index naming 'modèl' (NFC) while the disk holds 'modèl' (NFD): two
    different files on Linux; the set must be reported incomplete, not half converted."""
    import unicodedata

    folder = tmp_path / "outputs" / "exp" / "m"
    folder.mkdir(parents=True)
    nfc = unicodedata.normalize("NFC", "modèl-00001-of-00001.safetensors")
    nfd = unicodedata.normalize("NFD", nfc)
    save_file({"a": torch.ones(2)}, folder / nfd)
    index = folder / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {"a": nfc}}))
    result = _convert(tmp_path / "outputs")
    assert not outputs_exist(index)[1]
    assert "missing" in result.output


# --- single safetensors files ----------------------------------------------------------------------

def test_many_zero_size_tensors_cannot_take_minutes(tmp_path: Path) -> None:
    """Stops: a 6 MB header of 100,000 zero-size tensors (bytes: none; output budget: none)
    costing minutes of HDF5 dataset creation. Budget: a few hostile MB must stay seconds."""
    exp = tmp_path / "outputs" / "exp"
    exp.mkdir(parents=True)
    header = {f"t{i}": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]}
              for i in range(100_000)}
    _raw_safetensors(exp / "bomb.safetensors", header)
    start = time.monotonic()
    done = run_process("convert", "--jobs", "1", "--outputs-dir", tmp_path / "outputs")
    took = time.monotonic() - start
    assert "Traceback" not in done.stderr + done.stdout
    assert took < 30, f"{took:.0f} s for a {(exp / 'bomb.safetensors').stat().st_size} byte file"


def test_dtypes_without_bit_exact_storage_are_refused_cleanly(tmp_path: Path) -> None:
    """Stops: F8_E8M0 / F4 tensors being written as something else (not bit-exact) or
    crashing; refused in one line naming the file, no outputs."""
    exp = tmp_path / "outputs" / "exp"
    exp.mkdir(parents=True)
    _raw_safetensors(exp / "e8m0.safetensors",
                     {"s": {"dtype": "F8_E8M0", "shape": [4], "data_offsets": [0, 4]}}, b"\x7f" * 4)
    _raw_safetensors(exp / "f4.safetensors",
                     {"s": {"dtype": "F4", "shape": [4], "data_offsets": [0, 2]}}, b"\x12\x34")
    result = _convert(tmp_path / "outputs")
    for name in ("e8m0.safetensors", "f4.safetensors"):
        assert outputs_exist(exp / name) == (False, False)
        assert name in result.output


def test_zero_size_and_scalar_tensors_convert_bit_exact(tmp_path: Path) -> None:
    """Stops: zero-size tensors (shape [0, 3]) and 0-d scalars being dropped or reshaped."""
    exp = tmp_path / "outputs" / "exp"
    exp.mkdir(parents=True)
    tensors = {"empty": torch.zeros(0, 3), "scalar": torch.tensor(3.5, dtype=torch.float64),
               "bf": torch.tensor([1.5, -2.25], dtype=torch.bfloat16)}
    save_file(tensors, exp / "z.safetensors")
    assert _convert(tmp_path / "outputs").exit_code == 0
    got = _weights(exp / "z.safetensors")
    assert len(got) == 3
    shapes = sorted(v.shape for v in got.values())
    assert shapes == sorted([(0, 3), (), (2,)])
    assert load_file(exp / "z.safetensors")["scalar"].item() == 3.5


@pytest.mark.parametrize("name", ["", "a/../../escape", "/abs", ".", "x\x00y", "a//b", "n" * 70_000])
def test_hostile_tensor_names_cannot_escape_or_crash(tmp_path: Path, name: str) -> None:
    """Stops: a tensor name that is empty, a path, holds NUL or is 70 kB long crashing the
    HDF5 writer or writing outside the tensor group."""
    exp = tmp_path / "outputs" / "exp"
    exp.mkdir(parents=True)
    _raw_safetensors(exp / "n.safetensors",
                     {name: {"dtype": "U8", "shape": [2], "data_offsets": [0, 2]}}, b"\x01\x02")
    result = _convert(tmp_path / "outputs")
    assert result.exit_code in (0, 1), result.output
    if outputs_exist(exp / "n.safetensors")[0]:
        assert [v.tolist() for v in _weights(exp / "n.safetensors").values()] == [[1, 2]]
    else:
        assert "n.safetensors" in result.output


def test_file_truncated_between_header_read_and_conversion_is_a_clean_error(
        tmp_path: Path) -> None:
    """Stops: a safetensors file truncated after its header was checked: the memory map of
    the missing bytes raises ValueError (not a CkptError) or, mapped first, SIGBUS."""
    from ckptctl.formats.safetensors import SafetensorsTensors, write_tensor_items
    from ckptctl.readers.safetensors_file import read_header

    path = tmp_path / "t.safetensors"
    save_file({"a": torch.arange(1024, dtype=torch.float32)}, path)
    tensors = SafetensorsTensors(path, read_header(path))
    with open(path, "r+b") as handle:
        handle.truncate(path.stat().st_size - 2048)
    with pytest.raises(CkptError):
        write_tensor_items(tmp_path / "out.h5", tensors.items(), "safetensors")


# --- Weights & Biases ------------------------------------------------------------------------------

def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _ld(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _history_record(row: dict[str, Any]) -> bytes:
    items = b"".join(_ld(1, _ld(1, k.encode()) + _ld(16, json.dumps(v).encode()))
                     for k, v in row.items())
    return _ld(2, items)


def _wandb_log(path: Path, run_id: str, rows: list[dict[str, Any]]) -> None:
    data = bytearray(b":W&B" + (0xBEE1).to_bytes(2, "little") + b"\x00")
    for record in [_ld(17, _ld(1, run_id.encode())), *map(_history_record, rows)]:
        assert len(data) % 32768 + 7 + len(record) < 32768
        crc = zlib.crc32(record, zlib.crc32(b"\x01")) & 0xFFFFFFFF
        data += struct.pack("<IHB", crc, len(record), 1) + record
    path.write_bytes(bytes(data))


def _run(exp: Path, folder: str, rows: list[dict[str, Any]]) -> Path:
    run_dir = exp / "wandb" / folder
    run_dir.mkdir(parents=True)
    _wandb_log(run_dir / f"run-{folder.rsplit('-', 1)[1]}.wandb", folder.rsplit("-", 1)[1], rows)
    return run_dir


def _ckpt(path: Path, epoch: int, step: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"epoch": epoch, "global_step": step, "state_dict": {"w": torch.ones(2)}}, path)
    return path


def test_wandb_huge_integer_step_cannot_crash(tmp_path: Path) -> None:
    """Stops: a history row whose trainer/global_step is a 400-digit integer: float() of it
    raises OverflowError -> 'internal error'."""
    exp = tmp_path / "outputs" / "exp"
    _run(exp, "run-20250101_000000-abc123", [
        {"epoch": 1, "trainer/global_step": 10 ** 400, "val_loss": 0.5},
        {"epoch": 1, "trainer/global_step": 19, "val_loss": 10 ** 400}])
    ckpt = _ckpt(exp / "abc123" / "checkpoints" / "last.pt", 1, 20)
    result = _convert(tmp_path / "outputs")
    assert result.exit_code == 0, result.output
    assert outputs_exist(ckpt) == (True, True)


def test_wandb_summary_is_not_a_row_of_one_epoch(tmp_path: Path) -> None:
    """Stops: a synced run's wandb-summary.json holds each key's LAST value, logged at
    different steps (val_loss every 2 epochs, or a define_metric(summary='min') best);
    its 'epoch' is the last one logged, so matching the summary as if it were one row of
    that epoch labels the last checkpoint with another epoch's val_loss."""
    exp = tmp_path / "outputs" / "exp"
    files = exp / "wandb" / "run-20250101_000000-abc123" / "files"
    files.mkdir(parents=True)
    (files / "wandb-summary.json").write_text(json.dumps(
        {"epoch": 9, "trainer/global_step": 199, "train_loss": 0.2,
         "val_loss": 0.3, "_step": 60}))  # val_loss last logged at epoch 8
    ckpt = _ckpt(exp / "abc123" / "checkpoints" / "last.pt", 9, 200)
    assert _convert(tmp_path / "outputs").exit_code == 0
    metrics = _metrics(ckpt)
    assert "val_loss" not in metrics, "a summary value cannot be tied to the checkpoint's epoch"


def test_wandb_resumed_run_in_two_folders_uses_the_later_values(tmp_path: Path) -> None:
    """Stops: wandb.init(resume=...) writes a second folder with the same run id; the
    checkpoint of epoch 7 was rewritten by the resumed attempt, but the FIRST folder's
    epoch-7 values (the crashed attempt's) are attached."""
    exp = tmp_path / "outputs" / "exp"
    _run(exp, "run-20250101_000000-abc123",
         [{"epoch": 7, "trainer/global_step": 79, "val_loss": 0.9}])
    _run(exp, "run-20250102_000000-abc123",
         [{"epoch": 7, "trainer/global_step": 79, "val_loss": 0.5}])
    ckpt = _ckpt(exp / "proj" / "abc123" / "checkpoints" / "epoch=7-step=80.pt", 7, 80)
    assert _convert(tmp_path / "outputs").exit_code == 0
    assert _metrics(ckpt).get("val_loss") in (None, 0.5), _metrics(ckpt)


def test_wandb_nested_run_ids_on_the_path_pick_the_nearest_run(tmp_path: Path) -> None:
    """Stops: a fine-tuning run (id bbb222) saving under its parent run's folder
    (proj/aaa111/finetune/bbb222/checkpoints): both ids are on the path and the first
    run by folder name (the parent) is used, labelling the fine-tune checkpoint with the
    parent's metrics."""
    exp = tmp_path / "outputs" / "exp"
    _run(exp, "run-20250101_000000-aaa111",
         [{"epoch": 2, "trainer/global_step": 29, "val_loss": 0.9}])
    _run(exp, "run-20250102_000000-bbb222",
         [{"epoch": 2, "trainer/global_step": 29, "val_loss": 0.5}])
    ckpt = _ckpt(exp / "proj" / "aaa111" / "finetune" / "bbb222" / "checkpoints" / "e2.pt", 2, 30)
    assert _convert(tmp_path / "outputs").exit_code == 0
    assert _metrics(ckpt).get("val_loss") in (None, 0.5), _metrics(ckpt)


def test_wandb_epoch_logged_as_text_gives_no_epoch_match(tmp_path: Path) -> None:
    """Stops: history rows whose 'epoch' is a string ("3") being matched as epoch 3 (or
    crashing the matcher); without a numeric epoch only the step may match."""
    exp = tmp_path / "outputs" / "exp"
    _run(exp, "run-20250101_000000-abc123",
         [{"epoch": "3", "val_loss": 0.9}, {"epoch": "3", "trainer/global_step": 40,
                                              "val_loss": 0.7}])
    ckpt = _ckpt(exp / "abc123" / "checkpoints" / "e3.pt", 3, 40)
    assert _convert(tmp_path / "outputs").exit_code == 0
    assert _metrics(ckpt).get("val_loss") in (None, 0.7)


def test_wandb_history_memory_bomb_is_bounded(tmp_path: Path) -> None:
    """Stops: a transaction log of many tiny history items (each a new dict entry in
    Python) expanding far beyond its size: 8 MiB of log must not cost > 16x in memory
    (the budgets doc's ratio)."""
    exp = tmp_path / "outputs" / "exp"
    run_dir = exp / "wandb" / "run-20250101_000000-abc123"
    run_dir.mkdir(parents=True)
    data = bytearray(b":W&B" + (0xBEE1).to_bytes(2, "little") + b"\x00")
    item = b"".join(_ld(1, _ld(1, f"k{i}".encode()) + _ld(16, b"1")) for i in range(2000))
    record = _ld(2, item)  # ~20 kB: one record per block
    while len(data) < 8 << 20:
        pad = 32768 - len(data) % 32768
        if pad < 7 + len(record):
            data += b"\x00" * pad
            continue
        crc = zlib.crc32(record, zlib.crc32(b"\x01")) & 0xFFFFFFFF
        data += struct.pack("<IHB", crc, len(record), 1) + record
    log = run_dir / "run-abc123.wandb"
    log.write_bytes(bytes(data))
    code = textwrap.dedent(f"""
        import resource, sys
        from ckptctl.readers.wandb_run import read_wandb_run
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        run = read_wandb_run({str(run_dir)!r})
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(len(run.history), (after - before) * 1024)
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    rows, grown = map(int, done.stdout.split())
    assert grown <= 16 * log.stat().st_size, (
        f"{rows} rows from {log.stat().st_size >> 20} MiB of log grew memory by {grown >> 20} MiB")


@pytest.mark.parametrize("attack", ["fifo", "huge", "deep", "symlink_out"])
def test_hostile_config_json_next_to_weights_is_one_note_not_a_failure(tmp_path: Path,
                                                                       attack: str) -> None:
    """Stops: the config.json read next to Hugging Face weights blocking (a FIFO), reading
    gigabytes, recursing (nested 100,000 deep) or reading a file outside the tree through a
    symlink. The weights still convert; the file is noted as not read."""
    exp = tmp_path / "outputs" / "exp"
    exp.mkdir(parents=True)
    save_file({"w": torch.arange(4.0)}, exp / "model.safetensors")
    config = exp / "config.json"
    if attack == "fifo":
        os.mkfifo(config)
    elif attack == "huge":
        with config.open("wb") as handle:  # sparse: 6 GiB declared
            handle.truncate(6 << 30)
    elif attack == "deep":
        config.write_text('{"architectures": ' + "[" * 100_000 + "]" * 100_000 + "}")
    else:
        outside = tmp_path / "secret.json"
        outside.write_text(json.dumps({"architectures": ["Leaked"], "model_type": "leak"}))
        config.symlink_to(outside)
    started = time.monotonic()
    result = _convert(tmp_path / "outputs")
    assert time.monotonic() - started < 60
    assert result.exit_code == 0, result.output
    sidecar = sidecar_of(exp / "model.safetensors")
    assert sidecar["model"].get("architecture") != "Leaked"
    assert "config" not in sidecar["model"]
