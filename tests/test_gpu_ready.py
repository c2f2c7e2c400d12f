"""GPU readiness, checked on a CPU-only machine: the model keeps every condition
for TensorFlow's cuDNN LSTM kernel (a silent fallback to the generic kernel is
several times slower), and --use-gpu without GPUs fails at once, clearly."""

from __future__ import annotations

import pytest

from charlm.config import make_config
from charlm.model.network import build_model
from jobs.train import main

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


def test_use_gpu_without_gpu_fails_clearly(ray_local, tmp_path, capsys) -> None:
    """An embedded Ray on a machine with no GPU: exit 2 and one `error:` line
    naming the GPU, not a trainer waiting forever for GPU workers; nothing
    written."""
    import ray

    assert not ray.cluster_resources().get("GPU")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog. " * 200)
    runs = tmp_path / "runs"
    with pytest.raises(SystemExit) as stop:
        main(["--use-gpu", "--corpus", str(corpus), "--preset", "quick", "--epochs", "1",
              "--storage-path", str(runs), "--name", "gpu-check"])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert stop.value.code == 2 and len(errors) == 1, err
    assert "--use-gpu needs 1 GPU(s) but this machine has 0" in errors[0], errors
    assert not runs.exists()
