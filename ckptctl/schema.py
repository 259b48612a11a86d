"""The sidecar (``<stem>.metadata.yaml``) schema, version 1.0, as pydantic v2 models.

``python -m ckptctl.schema`` prints the JSON Schema committed as ``schemas/sidecar-1.0.schema.json``.
Unknown fields are rejected (``extra="forbid"``) so a typo in a hand-edited sidecar is
reported rather than silently ignored.
"""

from __future__ import annotations

import json
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

from .migrations import SCHEMA_VERSION

JsonValue = Any


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SourceInfo(_Strict):
    format: str = Field(description="torch-zip, torch-legacy, tf-index, keras-h5, …")
    size_bytes: int = Field(ge=0)
    mtime: float = Field(description="POSIX seconds of the source when converted")
    sha256: str | None = Field(pattern=r"^[0-9a-f]{64}$", description="over the files' bytes, in order")
    files: list[str] | None = Field(default=None, description="a multi-file checkpoint's files (TF-index: index, shards)")


class WeightsInfo(_Strict):
    layout: str = Field(description="ckptctl-tensors (README: Weights layout) or keras3")
    layout_version: str
    size_bytes: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    tensor_count: int = Field(ge=0)
    parameter_count: int = Field(ge=0, description="elements stored; tied tensors counted once")
    dtypes: dict[str, int] = Field(default_factory=dict, description="dtype -> tensor count")
    state_dict_key: str | None = Field(default=None, description="where in the source the weights were found")


class TrainingInfo(_Strict):
    epoch: int | None = None
    global_step: int | None = None
    framework: str | None = None
    framework_version: str | None = None


class ModelInfo(_Strict):
    architecture: str | None = None
    name: str | None = None
    backend: str | None = None
    run_name: str | None = Field(default=None, description="the run folder's name (often encodes the config)")
    training_config: dict[str, JsonValue] | None = Field(default=None, description="Keras loss/metrics/optimizer")
    hyper_parameters: dict[str, JsonValue] | None = None
    config: dict[str, JsonValue] | None = Field(default=None, description="the model section of the Hydra config")


class CheckpointingInfo(_Strict):
    monitor: str | None = None
    mode: Literal["min", "max"] | None = None
    save_top_k: int | None = None
    save_last: bool | None = None
    score: float | None = Field(default=None, description="this checkpoint's value of `monitor`")
    best_model_score: float | None = None
    best_when_saved: bool | None = Field(default=None, description="this file was the best so far when written (later epochs may beat it)")
    best_epoch: int | None = None
    role: str | None = Field(default=None, description="CheckpointManager folder: last or best")
    save_counter: int | None = None
    saved_at: float | None = Field(default=None, description="POSIX time from the TF checkpoint state file")
    saved_at_text: str | None = None
    is_latest: bool | None = Field(default=None, description="the state file's model_checkpoint_path")


class ContentsInfo(_Strict):
    keys: list[str] = Field(default_factory=list, description="top-level keys of the source")
    model_weights: bool = False
    optimizer_state: bool = False
    lr_scheduler_state: bool = False
    rng_state: bool = False
    resumable: bool = Field(default=False, description="weights + optimizer state present")


class Conflict(_Strict):
    field: str
    kept: JsonValue
    kept_from: str
    other: JsonValue
    other_from: str


class ToolInfo(_Strict):
    name: Literal["ckptctl"] = "ckptctl"
    version: str


class Sidecar(_Strict):
    schema_version: Literal["1.0"]
    checkpoint_path: str = Field(description="relative to the sidecar's folder")
    weights_path: str | None = Field(description="relative to the sidecar's folder; null = metadata only")
    exp_name: str
    created_at: str
    source: SourceInfo
    weights: WeightsInfo | None = None
    training: TrainingInfo = Field(default_factory=TrainingInfo)
    model: ModelInfo = Field(default_factory=ModelInfo)
    metrics: dict[str, float] = Field(default_factory=dict, description="metric name as logged -> value")
    checkpointing: CheckpointingInfo = Field(default_factory=CheckpointingInfo)
    contents: ContentsInfo = Field(default_factory=ContentsInfo)
    provenance: dict[str, list[str]] = Field(
        default_factory=dict, description="field group -> the sources its values came from"
    )
    conflicts: list[Conflict] = Field(default_factory=list)
    tool: ToolInfo


# The model accepts exactly the current version: older documents are migrated before
# validation (``migrations.upgrade``); this guard keeps the two spellings in step.
if get_args(Sidecar.model_fields["schema_version"].annotation) != (SCHEMA_VERSION,):
    raise ImportError("schema.Sidecar.schema_version and migrations.SCHEMA_VERSION differ")


def json_schema() -> dict[str, Any]:
    schema = Sidecar.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "ckptctl/sidecar-1.0.schema.json"
    return schema


def json_schema_text() -> str:
    return json.dumps(json_schema(), indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    print(json_schema_text(), end="")
