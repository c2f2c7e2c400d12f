"""GPU readiness, checked on a CPU-only machine: the model keeps every condition
for TensorFlow's cuDNN LSTM kernel (a silent fallback to the generic kernel is
several times slower), and --use-gpu without GPUs fails at once, clearly."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from charlm.config import make_config
from charlm.model.network import build_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CONFIGS = {
    "seed": dict(preset="seed"),
    "quick": dict(preset="quick"),
    "two_layers_dropout": dict(preset="quick", layers=2, dropout=0.2),
    "three_layers_last": dict(preset="seed", layers=3, dropout=0.5),
}


@pytest.mark.parametrize("name", CONFIGS)
def test_lstm_layers_keep_cudnn_conditions(name: str) -> None:
    overrides = dict(CONFIGS[name])
    config = make_config(overrides.pop("preset"), **overrides)
    model = build_model(config, vocab_size=40)
    lstms = [layer for layer in model.layers if type(layer).__name__ == "LSTM"]
    assert len(lstms) == config.layers
    for layer in lstms:
        assert type(layer).__module__.startswith("tf_keras."), "Keras 2 LSTM expected"
        c = layer.get_config()
        assert (c["activation"], c["recurrent_activation"]) == ("tanh", "sigmoid"), layer.name
        assert c["recurrent_dropout"] == 0, layer.name
        assert not c["unroll"] and c["use_bias"], layer.name
        assert layer.input_mask is None, f"{layer.name}: masked input can leave cuDNN"
        assert layer._could_use_gpu_kernel, f"{layer.name}: tf-keras itself rules cuDNN out"


def test_use_gpu_without_gpu_fails_clearly(tmp_path) -> None:
    """Embedded Ray on a machine with no GPU: exit 2 and one `error:` line
    naming the GPU, not a trainer waiting forever for GPU workers."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog. " * 200)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["CUDA_VISIBLE_DEVICES"] = ""  # no GPU for Ray to detect, even on a GPU machine
    proc = subprocess.run(
        [sys.executable, "-m", "jobs.train", "--use-gpu", "--corpus", str(corpus),
         "--preset", "quick", "--epochs", "1", "--storage-path", str(tmp_path / "runs"),
         "--name", "gpu-check"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=240,
    )
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert len(errors) == 1 and "GPU" in errors[0], proc.stderr[-3000:]
