"""Convert the musicnn package's TensorFlow-1 checkpoints into the weights `cml.model.musicnn` loads.

Run once, in a throwaway environment (TensorFlow pins what the project's environment must not hold):

    python3 -m venv /tmp/tfenv
    /tmp/tfenv/bin/pip install tensorflow-cpu tf_keras librosa
    /tmp/tfenv/bin/pip install --no-deps musicnn==0.1.0   # its numpy<1.17 pin cannot be met; it runs on current numpy
    /tmp/tfenv/bin/python scripts/convert_musicnn.py

It writes `cml/weights/musicnn/<MODEL>.npz` (PyTorch parameter names, float32) and the reference outputs
`tests/fixtures/musicnn_reference.npz`: every layer of every model for fixed input patches, computed by the
original TensorFlow graph (`musicnn.models.define_model`, weights restored strictly: a failed restore
raises here, where the package's extractor would silently go on with random weights).
"""
from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # tf.compat.v1.layers needs Keras 2 (tf_keras)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import tensorflow as tf
from musicnn import models

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "cml" / "weights" / "musicnn"
FIXTURE = ROOT / "tests" / "fixtures" / "musicnn_reference.npz"
PACKAGE = Path(models.__file__).parent
MODELS = ("MTT_musicnn", "MSD_musicnn", "MTT_vgg", "MSD_vgg")
PATCHES, FRAMES, MELS, SEED = 3, 187, 96, 0  # the fixture's input: seeded uniform log-mel values in [0, 4)


def fixture_input() -> np.ndarray:
    """The fixed input, drawn again by the test (numpy's PCG64 stream is stable across versions)."""
    return np.random.default_rng(SEED).uniform(0, 4, (PATCHES, FRAMES, MELS)).astype(np.float32)


def _bn(reader, tf_name: str, torch_name: str) -> dict[str, np.ndarray]:
    get = lambda v: reader.get_tensor(f"{tf_name}/{v}")
    return {f"{torch_name}.weight": get("gamma"), f"{torch_name}.bias": get("beta"),
            f"{torch_name}.running_mean": get("moving_mean"), f"{torch_name}.running_var": get("moving_variance"),
            f"{torch_name}.num_batches_tracked": np.array(0, np.int64)}


def _conv(reader, tf_name: str, torch_name: str) -> dict[str, np.ndarray]:
    kernel = reader.get_tensor(f"{tf_name}/kernel")  # (kh, kw, in, out) -> (out, in, kh, kw)
    return {f"{torch_name}.weight": kernel.transpose(3, 2, 0, 1),
            f"{torch_name}.bias": reader.get_tensor(f"{tf_name}/bias")}


def _dense(reader, tf_name: str, torch_name: str) -> dict[str, np.ndarray]:
    return {f"{torch_name}.weight": reader.get_tensor(f"{tf_name}/kernel").T,
            f"{torch_name}.bias": reader.get_tensor(f"{tf_name}/bias")}


def musicnn_state(reader) -> dict[str, np.ndarray]:
    """tf.compat.v1.layers names in creation order -> cml.model.musicnn.MusicnnNet names."""
    state = _bn(reader, "batch_normalization", "bn_input")
    blocks = ["timbral.0", "timbral.1", "temporal.0", "temporal.1", "temporal.2", "mid.0", "mid.1", "mid.2"]
    for i, name in enumerate(blocks):
        state |= _conv(reader, "conv2d" + (f"_{i}" if i else ""), f"{name}.conv")
        state |= _bn(reader, f"batch_normalization_{i + 1}", f"{name}.bn")
    state |= _bn(reader, "batch_normalization_9", "bn_pool") | _dense(reader, "dense", "dense")
    state |= _bn(reader, "batch_normalization_10", "bn_dense") | _dense(reader, "dense_1", "logits")
    return state


def vgg_state(reader) -> dict[str, np.ndarray]:
    """tf names -> cml.model.musicnn.VggNet names."""
    state = _bn(reader, "batch_normalization", "bn_input")
    for i in range(5):
        state |= _conv(reader, f"{i + 1}CNN", f"convs.{i}") | _bn(reader, f"batch_normalization_{i + 1}", f"bns.{i}")
    return state | _dense(reader, "dense", "logits")


def reference_outputs(model: str, x: np.ndarray) -> dict[str, np.ndarray]:
    """Every layer cml.model.musicnn exposes, from the original graph with the weights restored strictly."""
    tf.compat.v1.disable_eager_execution()
    tf.compat.v1.reset_default_graph()
    inputs = tf.compat.v1.placeholder(tf.float32, [None, FRAMES, MELS])
    training = tf.compat.v1.placeholder(tf.bool)
    out = models.define_model(inputs, training, model, 50)
    if "vgg" in model:
        logits, pool5 = out[0], out[5]
        layers = {"taggram": tf.nn.sigmoid(logits), "pool5": tf.compat.v1.layers.flatten(pool5)}
    else:
        logits, mean_pool, max_pool, penultimate = out[0], out[6], out[7], out[8]
        layers = {"taggram": tf.nn.sigmoid(logits), "penultimate": penultimate, "mean_pool": mean_pool,
                  "max_pool": max_pool}
    with tf.compat.v1.Session() as sess:
        tf.compat.v1.train.Saver().restore(sess, str(PACKAGE / model) + "/")
        values = sess.run(layers, feed_dict={inputs: x, training: False})
    return {name: np.asarray(v, np.float32) for name, v in values.items()}


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    x, reference = fixture_input(), {}
    for model in MODELS:
        reader = tf.compat.v1.train.NewCheckpointReader(str(PACKAGE / model) + "/")
        state = vgg_state(reader) if "vgg" in model else musicnn_state(reader)
        np.savez(OUT / f"{model}.npz", **{k: np.ascontiguousarray(v) for k, v in state.items()})
        reference |= {f"{model}/{layer}": v for layer, v in reference_outputs(model, x).items()}
        print(f"{model}: {sum(v.size for v in state.values()):,} values -> {OUT / model}.npz")
    FIXTURE.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(FIXTURE, **reference)
    print(f"reference outputs of {len(reference)} layers -> {FIXTURE}")


if __name__ == "__main__":
    main()
