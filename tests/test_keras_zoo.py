"""The Keras zoo (``examples/keras_zoo.py``): real architectures saved by tf_keras in every
legacy form, and Keras 3 models in ``tf.train.Checkpoint``s, converted by ckptctl and checked
against the real libraries.

A ``weights.layout: keras3`` file must load with Keras 3's ``model.load_weights()`` into the
architecture's Keras 3 model (in a fresh process without tf_keras, as a user's) and then hold
every variable of the source bit for bit and predict what Keras 3 predicts from the source's
values; anything else is a WRONG claim and fails ``test_no_wrong_keras3_claims``. A
``ckptctl-tensors`` file is an honest fallback and must say why. ``EXPECTED`` pins what every
case and form does today, so an improvement (fallback -> keras3) and a regression both show
as a difference to update deliberately (``tools/keras_zoo_report.py --expected`` prints the
current dict and the README table).

The zoo is built once per session (about 1-1.5 minutes on 2 cores, shared by xdist workers)
and converted once per run of this module. Set ``CKPTCTL_KERAS_ZOO=DIR`` to keep the build in
DIR between sessions (rebuilt when the zoo's building code or a library version changes).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import keras_zoo  # examples/, put on sys.path by conftest
import pytest
from conftest import _build_once

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("keras_zoo")]

Built = tuple[Path, dict[str, Any]]

#: case/form -> "keras3" (verified), "fallback" (ckptctl-tensors with a reason), "failed"
#: (convert failed: the issue wants none), "skipped" (tf_keras cannot save that form).
#: What the current mapping does; update it as the mapping improves.
EXPECTED: dict[str, str] = {
    "MobileNet/tf-index": "keras3",
    "MobileNet/h5-weights": "keras3",
    "MobileNet/h5-model": "keras3",
    "MobileNetV2+Adam/tf-index": "keras3",
    "MobileNetV2+Adam/h5-weights": "keras3",
    "MobileNetV2+Adam/h5-model": "keras3",
    "MobileNetV3Small/tf-index": "keras3",
    "MobileNetV3Small/h5-weights": "keras3",
    "MobileNetV3Small/h5-model": "keras3",
    "ResNet50+Adam/tf-index": "keras3",
    "ResNet50+Adam/h5-weights": "keras3",
    "ResNet50+Adam/h5-model": "keras3",
    "ResNet50V2/tf-index": "keras3",
    "ResNet50V2/h5-weights": "keras3",
    "ResNet50V2/h5-model": "keras3",
    "DenseNet121/tf-index": "keras3",
    "DenseNet121/h5-weights": "keras3",
    "DenseNet121/h5-model": "keras3",
    "EfficientNetB0/tf-index": "keras3",
    "EfficientNetB0/h5-weights": "keras3",
    "EfficientNetB0/h5-model": "keras3",
    "EfficientNetV2B0/tf-index": "keras3",
    "EfficientNetV2B0/h5-weights": "keras3",
    "EfficientNetV2B0/h5-model": "keras3",
    "ConvNeXtTiny/tf-index": "keras3",
    "ConvNeXtTiny/h5-weights": "keras3",
    "ConvNeXtTiny/h5-model": "keras3",
    "Xception/tf-index": "keras3",
    "Xception/h5-weights": "keras3",
    "Xception/h5-model": "keras3",
    "VGG16/tf-index": "keras3",
    "VGG16/h5-weights": "keras3",
    "VGG16/h5-model": "keras3",
    "InceptionV3/tf-index": "keras3",
    "InceptionV3/h5-weights": "keras3",
    "InceptionV3/h5-model": "keras3",
    "InceptionResNetV2/tf-index": "keras3",
    "InceptionResNetV2/h5-weights": "keras3",
    "InceptionResNetV2/h5-model": "keras3",
    "NASNetMobile/tf-index": "keras3",
    "NASNetMobile/h5-weights": "keras3",
    "NASNetMobile/h5-model": "keras3",
    "SimpleRNN/tf-index": "keras3",
    "SimpleRNN/h5-weights": "keras3",
    "SimpleRNN/h5-model": "keras3",
    "LSTM/tf-index": "keras3",
    "LSTM/h5-weights": "keras3",
    "LSTM/h5-model": "keras3",
    "GRU/tf-index": "keras3",
    "GRU/h5-weights": "keras3",
    "GRU/h5-model": "keras3",
    "Bidirectional(LSTM)/tf-index": "keras3",
    "Bidirectional(LSTM)/h5-weights": "keras3",
    "Bidirectional(LSTM)/h5-model": "keras3",
    "Embedding+Bidirectional(GRU)/tf-index": "keras3",
    "Embedding+Bidirectional(GRU)/h5-weights": "keras3",
    "Embedding+Bidirectional(GRU)/h5-model": "keras3",
    "TimeDistributed(Dense)/tf-index": "keras3",
    "TimeDistributed(Dense)/h5-weights": "keras3",
    "TimeDistributed(Dense)/h5-model": "keras3",
    "MultiHeadAttention/tf-index": "keras3",
    "MultiHeadAttention/h5-weights": "keras3",
    "MultiHeadAttention/h5-model": "keras3",
    "Attention(use_scale)/tf-index": "keras3",
    "Attention(use_scale)/h5-weights": "keras3",
    "Attention(use_scale)/h5-model": "keras3",
    "Conv1D/tf-index": "keras3",
    "Conv1D/h5-weights": "keras3",
    "Conv1D/h5-model": "keras3",
    "Conv3D/tf-index": "keras3",
    "Conv3D/h5-weights": "keras3",
    "Conv3D/h5-model": "keras3",
    "SeparableConv2D/tf-index": "keras3",
    "SeparableConv2D/h5-weights": "keras3",
    "SeparableConv2D/h5-model": "keras3",
    "DepthwiseConv2D(named)/tf-index": "keras3",
    "DepthwiseConv2D(named)/h5-weights": "keras3",
    "DepthwiseConv2D(named)/h5-model": "keras3",
    "Conv2DTranspose/tf-index": "keras3",
    "Conv2DTranspose/h5-weights": "keras3",
    "Conv2DTranspose/h5-model": "keras3",
    "LayerNormalization/tf-index": "keras3",
    "LayerNormalization/h5-weights": "keras3",
    "LayerNormalization/h5-model": "keras3",
    "GroupNormalization/tf-index": "keras3",
    "GroupNormalization/h5-weights": "keras3",
    "GroupNormalization/h5-model": "keras3",
    "BatchNormalization(scale=False)/tf-index": "keras3",
    "BatchNormalization(scale=False)/h5-weights": "keras3",
    "BatchNormalization(scale=False)/h5-model": "keras3",
    "Normalization(adapted)/tf-index": "keras3",
    "Normalization(adapted)/h5-weights": "keras3",
    "Normalization(adapted)/h5-model": "keras3",
    "PReLU/tf-index": "keras3",
    "PReLU/h5-weights": "keras3",
    "PReLU/h5-model": "keras3",
    "Nested: Sequential(MobileNetV2)/tf-index": "fallback",
    "Nested: Sequential(MobileNetV2)/h5-weights": "keras3",
    "Nested: Sequential(MobileNetV2)/h5-model": "keras3",
    "Nested: Sequential in functional/tf-index": "keras3",
    "Nested: Sequential in functional/h5-weights": "keras3",
    "Nested: Sequential in functional/h5-model": "keras3",
    "Subclassed model/tf-index": "fallback",
    "Subclassed model/h5-weights": "fallback",
    "Subclassed model/h5-model": "skipped",
    "Custom layer/tf-index": "fallback",
    "Custom layer/h5-weights": "fallback",
    "Custom layer/h5-model": "fallback",
    "keras3:MobileNetV2/tf-checkpoint": "keras3",
    "keras3:MobileNetV2/tf-manager": "keras3",
    "keras3:Sequential CNN/tf-checkpoint": "keras3",
    "keras3:Sequential CNN/tf-manager": "keras3",
    "keras3:LSTM/tf-checkpoint": "keras3",
    "keras3:LSTM/tf-manager": "keras3",
    "keras3:Bidirectional(LSTM)/tf-checkpoint": "keras3",
    "keras3:Bidirectional(LSTM)/tf-manager": "keras3",
    "keras3:Nested: Sequential(MobileNetV2)/tf-checkpoint": "keras3",
    "keras3:Nested: Sequential(MobileNetV2)/tf-manager": "keras3",
    "keras3:Nested: Sequential in functional/tf-checkpoint": "keras3",
    "keras3:Nested: Sequential in functional/tf-manager": "keras3",
}#: families the zoo cannot build here, and why (the zoo's own limits, not ckptctl's)
EXPECTED_NOT_BUILT: dict[str, str] = {
    "RegNetX002": "RegNetX002 does not exist in keras.applications",
}


@pytest.fixture(scope="session")
def keras_zoo_tree(tmp_path_factory: pytest.TempPathFactory) -> Built:
    """The built zoo ``(root, manifest)``; shared, do not write to it."""
    keep = os.environ.get("CKPTCTL_KERAS_ZOO")
    if keep:
        root = Path(keep).resolve() / "zoo"
        return root, keras_zoo.build_zoo_cached(root)
    return _build_once(tmp_path_factory, "keras_zoo", keras_zoo.build_zoo)


@pytest.fixture(scope="module")
def zoo(keras_zoo_tree: Built, tmp_path_factory: pytest.TempPathFactory
        ) -> tuple[dict[str, Any], list[keras_zoo.Outcome], str]:
    """``(manifest, outcomes, table)``: a copy of the zoo converted once
    (``convert --outputs-dir`` through the API, for the notes) and every form judged."""
    root, manifest = keras_zoo_tree
    work = tmp_path_factory.mktemp("keras_zoo_run")
    run = keras_zoo.evaluate_zoo(root, manifest, work)
    table = keras_zoo.markdown_table(run.outcomes, manifest)
    (work / "keras_zoo.md").write_text(table + "\n")  # the full table, for a failing run
    return manifest, run.outcomes, table


def _lines(outcomes: list[keras_zoo.Outcome]) -> str:
    return "\n".join(f"  {o.key}: {keras_zoo.cell(o)}" for o in outcomes)


def test_no_wrong_keras3_claims(zoo: tuple[dict[str, Any], list[keras_zoo.Outcome], str]) -> None:
    """Every file labelled keras3 loads into the Keras 3 model and equals its source."""
    _, outcomes, _ = zoo
    wrong = [o for o in outcomes if o.status == "wrong"]
    assert not wrong, (f"{len(wrong)} converted file(s) claim the Keras 3 layout but do not "
                       f"load or differ from the source:\n{_lines(wrong)}")


def test_every_keras3_claim_was_checked(zoo: tuple[dict[str, Any], list[keras_zoo.Outcome], str]) -> None:
    """A keras3 label the zoo could not check (the source unreadable by the real library,
    or a Keras 2/3 pair that differs) would hide a wrong claim: the zoo must be fixed."""
    _, outcomes, _ = zoo
    unchecked = [o for o in outcomes if o.status == "unverified"]
    assert not unchecked, f"keras3 files the zoo could not verify:\n{_lines(unchecked)}"


def test_outcomes_match_expected(zoo: tuple[dict[str, Any], list[keras_zoo.Outcome], str]) -> None:
    """Improvements and regressions both show; wrong claims are the test above's."""
    _, outcomes, table = zoo
    actual = {o.key: o for o in outcomes}
    assert set(actual) == set(EXPECTED), (
        f"cases/forms not in EXPECTED: {sorted(set(actual) - set(EXPECTED))}; "
        f"in EXPECTED but not in the zoo: {sorted(set(EXPECTED) - set(actual))}")
    changed = [o for key, o in actual.items() if o.status != "wrong" and o.status != EXPECTED[key]]
    rank = {"failed": 0, "missed": 0, "skipped": 1, "fallback": 1, "unverified": 1, "keras3": 2}
    better = [o for o in changed if rank[o.status] > rank.get(EXPECTED[o.key], 0)]
    worse = [o for o in changed if o not in better]
    message = []
    if worse:
        message.append("regressions (expected → now):\n" + "\n".join(
            f"  {o.key}: {EXPECTED[o.key]} → {keras_zoo.cell(o)}" for o in worse))
    if better:
        message.append("improvements, update EXPECTED:\n" + "\n".join(
            f'    "{o.key}": "{o.status}",' for o in better))
    assert not changed, "\n".join(message) + f"\n\nthe whole zoo:\n{table}"


def test_every_fallback_says_why_in_one_line(
        zoo: tuple[dict[str, Any], list[keras_zoo.Outcome], str]) -> None:
    _, outcomes, _ = zoo
    fallbacks = [o for o in outcomes if o.status == "fallback"]
    assert fallbacks  # the zoo has families the mapping cannot be sure of
    for outcome in fallbacks:
        assert outcome.extra.get("layout") == "ckptctl-tensors", outcome.key
        assert outcome.detail and "\n" not in outcome.detail, outcome.key
        assert not outcome.detail.startswith("layout "), f"{outcome.key}: no reason given"


def test_the_zoo_is_what_it_says(keras_zoo_tree: Built) -> None:
    """Families missing here are the known ones; every Keras 2/3 pair is the same
    architecture (else its conversions could not be judged)."""
    _, manifest = keras_zoo_tree
    assert {s["case"]: s["reason"] for s in manifest["skipped_cases"]} == EXPECTED_NOT_BUILT
    assert keras_zoo.twin_problems(manifest) == []
    forms = {f"{c['case']}/{f['form']}": f for c in manifest["cases"] for f in c["forms"]}
    assert forms["MobileNetV2+Adam/tf-index"]["source"].endswith("/tf-index/w.ckpt")
    assert all(c["fit"] for c in manifest["cases"] if c["case"].endswith("+Adam"))
