"""The protocol every source format implements, and the vocabulary of format ids.

A format entry answers five questions about a path, in the order the operations ask them:

``sniff(probe)``            is this file (one of) my checkpoint(s)?  -> FoundCheckpoint / NOT_A_SOURCE / None
``files(path)``             which files make up the checkpoint (hashed and fingerprinted together)?
``check_structure(path)``   is its structure readable (``scan``; no tensor data)?
``open(path, fmt)``         read it once for conversion, returning an ``OpenedSource`` that can
    ``read_metadata(g)``        offer what the checkpoint itself says (``Gathered.offer``), and
    ``plan_weights(g, opts)``   say how its weights are written (a ``WeightsPlan``).

Everything format-independent (logger files, Hydra, file-name tokens, hashing, temporary
files, the sidecar) is done by the operations. Nothing here imports an ML framework.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Final, Literal, get_args

from ..errors import ErrorKind
from ..safeio import open_regular

if TYPE_CHECKING:
    from ..metadata import Gathered

#: Every source format ckptctl knows; the sidecar's ``source.format``.
FormatId = Literal[
    "torch-zip",          # torch.save since 1.6 (zip archive: data.pkl + data/<key>)
    "torch-legacy",       # torch.save before 1.6 (pickles and raw storages in one stream)
    "tf-index",           # TensorFlow TensorBundle: prefix.index + prefix.data-*-of-*
    "keras2-h5-model",    # Keras 2 model.save("m.h5")
    "keras2-h5-weights",  # Keras 2 model.save_weights("w.h5")
    "keras3-weights-h5",  # Keras 3 save_weights("x.weights.h5"): described, never rewritten
    "keras3-keras",       # Keras 3 model.save("x.keras"): described, never rewritten
    "safetensors",        # safetensors file (save_file, save_pretrained): header + raw bytes
    "safetensors-sharded",  # HF index (model.safetensors.index.json) + its safetensors shards
    "torch-sharded",      # HF index (pytorch_model.bin.index.json) + its torch.save shards
    "hf-trainer",         # a Hugging Face Trainer checkpoint folder (checkpoint-500/)
]
FORMAT_IDS: Final[tuple[FormatId, ...]] = get_args(FormatId)


@dataclass
class FoundCheckpoint:
    """A checkpoint found on disk (for a TF-index checkpoint: its prefix, not a file)."""

    path: Path
    format: FormatId | None
    #: why a file that looks like a checkpoint cannot be read (None when it looks fine)
    problem: str | None = None
    problem_kind: ErrorKind = "corrupt"


class _NotASource:
    """A file that belongs to a format but is not a checkpoint of its own (a TF data shard
    whose index exists, a weights file ckptctl wrote): no other format may claim it."""

    def __repr__(self) -> str:
        return "NOT_A_SOURCE"


NOT_A_SOURCE: Final = _NotASource()
Sniffed = FoundCheckpoint | _NotASource | None

_HEAD_BYTES = 512  # a tar header: torch's oldest format is told by its first block


class Probe:
    """One file being classified: its name and, read once on demand, its first bytes.

    Formats share the probe, so a file is opened at most once however many formats look.
    ``memo`` keeps one expensive answer (an HDF5 kind) for every format that asks.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.name = path.name
        self._head: bytes | None = None
        self._error: OSError | None = None
        self._memo: dict[str, object] = {}

    def head(self) -> bytes:
        """The first bytes (fewer for a short file); raises the OSError of opening it."""
        if self._head is None and self._error is None:
            try:
                with open_regular(self.path, "rb") as handle:
                    self._head = handle.read(_HEAD_BYTES)
            except OSError as exc:
                self._error = exc
        if self._error is not None:
            raise self._error
        assert self._head is not None
        return self._head

    def memo(self, key: str, compute: Callable[[], object]) -> object:
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]

    def unreadable(self) -> FoundCheckpoint | None:
        """A problem row when the file cannot be opened, else None."""
        try:
            self.head()
        except OSError as exc:
            return FoundCheckpoint(self.path, None, f"cannot read ({exc.strerror})", "os")
        return None


@dataclass
class WrittenWeights:
    """What a weights writer reports: the sidecar's ``weights`` section minus size/sha256,
    plus the checksums of every dataset, which convert verifies by reading the file back."""

    layout: str
    layout_version: str
    tensor_count: int
    parameter_count: int
    dtypes: dict[str, int]
    state_dict_key: str | None = None
    #: dataset path -> crc32 of the bytes meant to be there (empty: already verified)
    checksums: dict[str, int] = field(default_factory=dict)


WeightsWriter = Callable[[Path], WrittenWeights]


@dataclass
class WeightsPlan:
    """How one checkpoint's weights reach disk: written by ``write`` into a temporary file,
    or (Keras 3 natives) ``native``: the source file already is the weights file."""

    write: WeightsWriter | None = None
    native: Path | None = None
    #: the ``weights`` section for a native file (counts and dtypes read from it)
    describe_native: Callable[[], WrittenWeights] | None = None
    #: said to the user on success (e.g. why a Keras 3 layout was not possible)
    notes: list[str] = field(default_factory=list)
    #: the weights file's suffix (``<stem>.weights.h5``, or ``<stem>.safetensors`` with
    #: ``--weights-format safetensors``)
    suffix: str = ".weights.h5"


@dataclass
class WeightsOptions:
    #: ``--keras-model module:function``: build the user's Keras 3 model to verify against
    keras_model: str | None = None
    #: ``--weights-format``: "h5" (``.weights.h5``) or "safetensors" (PyTorch-family sources)
    weights_format: str = "h5"


class OpenedSource(ABC):
    """A checkpoint opened for conversion: its structure read once, shared by both steps."""

    format: FormatId
    files: list[Path]

    @abstractmethod
    def read_metadata(self, g: Gathered) -> None:
        """Offer what the checkpoint itself records (epoch, callback state, framework …)."""

    @abstractmethod
    def plan_weights(self, g: Gathered, options: WeightsOptions) -> WeightsPlan:
        """Decide how the weights are written; raises ``CkptError`` when they cannot be.
        Called after every metadata source has been offered (and never for --metadata-only)."""


class SourceFormat(ABC):
    """One entry of the registry (``ckptctl.formats.REGISTRY``)."""

    #: the format ids this entry recognises
    ids: ClassVar[tuple[FormatId, ...]]
    #: extensions that promise a checkpoint: such a file that no format recognises is reported
    promised_suffixes: ClassVar[tuple[str, ...]] = ()
    #: False for formats Keras 3 already loads: described by a sidecar, never rewritten
    writes_weights: ClassVar[bool] = True
    #: PyTorch state dicts, which ``--weights-format safetensors`` applies to (Keras
    #: sources keep their Keras-3-loadable ``.weights.h5``)
    pytorch_family: ClassVar[bool] = False

    @abstractmethod
    def sniff(self, probe: Probe) -> Sniffed:
        """FoundCheckpoint when the file is (or names) one of this format's checkpoints,
        with ``problem`` set when it is recognisably one but broken; NOT_A_SOURCE when it
        belongs to this format without being a checkpoint; None when it is not this format's."""

    def files(self, path: Path) -> list[Path]:
        """The files that make up the checkpoint named ``path``, in hashing order."""
        return [path]

    def check_structure(self, path: Path) -> None:  # noqa: B027 - optional: most need none
        """Read the structure without tensor data; raise ``CkptError`` when it is broken."""

    @abstractmethod
    def open(self, path: Path, fmt: FormatId) -> OpenedSource:
        """Read the checkpoint's structure for conversion (raises ``CkptError``)."""

