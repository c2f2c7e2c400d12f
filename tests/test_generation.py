"""jobs.generate, jobs.sample and jobs.export end to end on one local Ray:
two tiny runs trained by charlm itself (characters: the session's word_run,
and UTF-8 bytes of accented Latin and CJK), real actors, real Parquet read
back with pandas, SavedModels loaded back."""

from __future__ import annotations

import argparse
import io
import itertools
import json
import os
import random
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pyarrow.fs as pafs
import pytest

from charlm.config import make_config
from charlm.generation.job import batch_size_for
from charlm.generation.sampler import SampleOptions, sample
from charlm.model import checkpoint
from charlm.training.trainer import train
from jobs import export
from jobs import generate as job

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLUMNS = ["run_id", "created_at", "checkpoint", "checkpoint_epoch", "corpus", "seed_text",
           "temperature", "sample_index", "rng_seed", "context_mode", "top_k", "top_p", "precision",
           "length", "text", "mean_logprob", "seconds", "generated_at"]
WORDS = ("café crème brûlée naïve señor über straße déjà élan façade "
         "東京 日本語 漢字 中文 北京 大阪 学生 先生").split()


@pytest.fixture(scope="module")
def byte_run(ray_local, tmp_path_factory) -> str:
    """One short epoch of a small model on accented Latin and CJK words
    (--vocab bytes): its run directory."""
    rng = random.Random(0)
    mixed = tmp_path_factory.mktemp("mixed") / "mixed.txt"
    mixed.write_text(" ".join(rng.choice(WORDS) for _ in range(4000)), encoding="utf-8")
    storage = str(tmp_path_factory.mktemp("runs"))
    train(make_config(None, corpus=str(mixed), vocab="bytes", objective="all", maxlen=16,
                      step=16, batch_size=32, units=32, learning_rate=0.02, clipnorm=1.0,
                      epochs=1, storage_path=storage, name="mixed"))
    return os.path.join(storage, "mixed")


@pytest.fixture(scope="module")
def char_run(word_run) -> str:
    return word_run


def best(run: str) -> str:
    return checkpoint.best_in_run(run)


def run_job(*argv) -> str:
    parser = argparse.ArgumentParser()
    job.add_arguments(parser)
    return job.run(parser.parse_args([str(a) for a in argv]))


def leftovers(path) -> list[str]:
    """Anything at the output path, or temporary directories beside it."""
    parent, name = os.path.split(str(path))
    return sorted(f for f in os.listdir(parent) if f == name or f.startswith(f".{name}."))


STATEFUL = ["--context-mode", "stateful", "--top-k", 3, "--top-p", 0.8, "--precision", "bf16"]


@pytest.fixture(scope="module")
def stateful(char_run, tmp_path_factory):
    """Stateful, top-k and top-p, in bf16, on two actors (a batch of 21
    requests each), written with --overwrite over an older output."""
    out = tmp_path_factory.mktemp("gen") / "out"
    out.mkdir()
    (out / "old.parquet").write_text("an older output")
    path = run_job("--checkpoint", char_run, "--num-seeds", 4, "--seed", "the quick ",
                   "--seed", "a", "--temperatures", "0,0.5,1.0", "--samples-per-seed", 2,
                   "--length", 24, *STATEFUL, "--concurrency", 2, "--cpus-per-actor", 1,
                   "--output", out, "--overwrite")
    return path, pd.read_parquet(path)


def test_output_schema_and_every_request_on_two_actors(stateful, char_run, capsys):
    path, df = stateful
    assert list(df.columns) == COLUMNS
    assert str(df["created_at"].dtype) == "datetime64[us, UTC]"
    assert str(df["generated_at"].dtype) == "datetime64[us, UTC]"
    assert (df["generated_at"] > df["created_at"]).all()
    for column in ("checkpoint_epoch", "sample_index", "rng_seed", "top_k", "length"):
        assert df[column].dtype == np.int64
    for column in ("temperature", "top_p", "mean_logprob", "seconds"):
        assert df[column].dtype == np.float64
    assert df["run_id"].nunique() == 1
    uri = best(char_run)
    meta = checkpoint.read_meta(uri)
    assert set(df["checkpoint"]) == {uri} and set(df["checkpoint_epoch"]) == {meta["epoch"]}
    assert set(df["corpus"]) == {meta["corpus"]["name"]}

    seeds = df["seed_text"].unique().tolist()
    recorded = meta["corpus"]["heldout_seeds"]
    assert seeds[:3] == [meta["corpus"]["seed_text"], "the quick ", "a"]  # the recipe's: row 0
    assert len(seeds) == 7 and set(seeds[3:]) <= set(recorded)
    keys = set(zip(df.seed_text, df.temperature, df.sample_index, strict=True))
    assert keys == set(itertools.product(seeds, [0.0, 0.5, 1.0], [0, 1]))
    assert len(df) == len(keys) == 42 and df["rng_seed"].nunique() == 42

    assert (df["text"].str.len() == 24).all() and (df["length"] == 24).all()
    assert set(df["context_mode"]) == {"stateful"} and set(df["top_k"]) == {3}
    assert set(df["top_p"]) == {0.8} and set(df["precision"]) == {"bf16"}
    assert (df["mean_logprob"] < 0).all() and (df["seconds"] > 0).all()
    greedy = df[df.temperature == 0].groupby("seed_text")["text"].nunique()
    assert (greedy == 1).all()  # T = 0: every sample of a seed is the argmax path
    assert df.groupby("generated_at").size().tolist() == [21, 21]  # one batch per actor
    assert os.listdir(path) and "old.parquet" not in os.listdir(path)
    assert leftovers(path) == ["out"]


def test_default_batch_is_up_to_1024_requests_and_one_per_actor_at_least():
    assert batch_size_for(4096, 1) == 1024
    assert batch_size_for(4096, 8) == 512
    assert batch_size_for(42, 2) == 21 and batch_size_for(1, 4) == 1


def test_quick_sampler_streams_the_jobs_text_without_ray(stateful, char_run):
    """jobs.sample in a fresh process: the text of the job's row for the same
    request (seed, temperature, sample index, --rng-seed), and Ray never imported."""
    _, df = stateful
    row = df[(df.sample_index == 1) & (df.temperature == 1.0)].iloc[-1]
    code = ("import sys; from jobs import sample; sample.main(sys.argv[1:]); "
            "assert 'ray' not in sys.modules, 'imported ray'")
    argv = ["--checkpoint", char_run, "--prime", row.seed_text, "--temperature", row.temperature,
            "--length", 24, "--sample-index", 1, *STATEFUL]
    done = subprocess.run([sys.executable, "-c", code, *map(str, argv)], capture_output=True,
                          text=True, timeout=300, env={**os.environ, "PYTHONPATH": ROOT})
    assert done.returncode == 0, done.stderr
    assert done.stdout == row.seed_text + row.text + "\n"
    assert f"rng_seed {row.rng_seed})" in done.stderr


def test_the_driver_never_imports_tensorflow(char_run):
    """What the driver does before Ray Data (options, charlm.json, seeds,
    requests) runs without TensorFlow; the actors load the weights."""
    code = f"""
import sys
from jobs import generate
from charlm.generation import job, seeds, weights
from charlm.model import checkpoint
o = job.GenerateOptions(checkpoint={char_run!r}, output="unused", num_seeds=3)
meta = weights.checked_meta(checkpoint.locate(o.checkpoint))
assert len(seeds.requests(seeds.collect_seeds(meta, num_seeds=3), job.checked_temperatures(o),
                          1, 0)) == 16
assert "tensorflow" not in sys.modules, "imported tensorflow"
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": ROOT})
    assert done.returncode == 0, done.stderr


def test_refuses_an_existing_output(stateful, char_run, capsys):
    path, _ = stateful
    mtimes = {f: os.path.getmtime(os.path.join(path, f)) for f in os.listdir(path)}
    with pytest.raises(SystemExit) as exit_:
        job.main(["--checkpoint", char_run, "--output", path])
    assert exit_.value.code == 2
    assert "already exists" in capsys.readouterr().err
    assert {f: os.path.getmtime(os.path.join(path, f)) for f in os.listdir(path)} == mtimes


def test_failure_mid_job_keeps_the_old_output(char_run, tmp_path):
    """The checkpoint passes the driver's check (its charlm.json) but the actor
    cannot load its weights: the output it was to replace stays as it was."""
    broken = tmp_path / "broken"
    shutil.copytree(best(char_run), broken)
    data = next(broken.glob("state.data-*"))
    data.write_bytes(data.read_bytes()[:100])
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.parquet").write_text("the older output")
    with pytest.raises(Exception, match="cannot be loaded"):
        run_job("--checkpoint", broken, "--length", 10, "--output", out, "--overwrite")
    assert leftovers(out) == ["out"] and os.listdir(out) == ["old.parquet"]


def _write(path, text) -> str:
    path.write_text(text, encoding="utf-8")
    return str(path)


@pytest.mark.parametrize("case, message", [
    ("missing checkpoint", "does not exist"),
    ("unloadable checkpoint", "cannot be loaded"),
    ("no recorded seeds", "the checkpoint records no held-out seeds; pass seeds with --seed"),
    ("unknown characters", "outside the model's vocabulary: '€' '☃'"),
    ("empty seeds file", "holds no seed"),
    ("length 0", "--length is 0"),
    ("top-p 0", "--top-p is 0.0"),
    ("top-k below 0", "--top-k is -1"),
    ("temperature not a number", "'warm' is not a number"),
    ("negative temperature", "temperature -0.5 is not allowed"),
    ("no temperature", "lists no temperature"),
    ("too many seeds", "--num-seeds 5000 asks for more distinct held-out seeds"),
    ("unwritable output", "cannot be written"),
    ("no GPU", "--use-gpu needs 1 GPU(s)"),
])
def test_bad_input_is_one_line_and_writes_nothing(case, message, char_run, tmp_path, capsys):
    garbage = tmp_path / "garbage"
    garbage.mkdir()
    _write(garbage / checkpoint.META, "{not json")
    unseeded = tmp_path / "unseeded"
    shutil.copytree(best(char_run), unseeded)
    meta = json.loads((unseeded / checkpoint.META).read_text())
    del meta["corpus"]["heldout_seeds"]
    _write(unseeded / checkpoint.META, json.dumps(meta))
    out = tmp_path / "out"
    a_file = _write(tmp_path / "a_file", "x")
    argv = {
        "missing checkpoint": ["--checkpoint", tmp_path / "nope"],
        "unloadable checkpoint": ["--checkpoint", garbage],
        "no recorded seeds": ["--checkpoint", unseeded, "--num-seeds", 2],
        "unknown characters": ["--seed", "snow☃man €"],
        "empty seeds file": ["--seeds-file", _write(tmp_path / "seeds.txt", "\n  \n")],
        "length 0": ["--length", 0],
        "top-p 0": ["--top-p", 0],
        "top-k below 0": ["--top-k", -1],
        "temperature not a number": ["--temperatures", "0.5,warm"],
        "negative temperature": ["--temperatures", "1,-0.5"],
        "no temperature": ["--temperatures", " , "],
        "too many seeds": ["--num-seeds", 5000],
        "unwritable output": ["--output", os.path.join(a_file, "out")],
        "no GPU": ["--use-gpu"],
    }[case]
    for flag, value in {"--checkpoint": char_run, "--output": out}.items():
        if flag not in argv:
            argv += [flag, value]
    with pytest.raises(SystemExit) as exit_:
        job.main([str(a) for a in argv])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and message in err, err
    assert leftovers(out) == []


def test_quick_sampler_bad_input_is_one_line(char_run, capsys):
    from jobs import sample as sample_job

    for argv, message in ((["--prime", "snow☃"], "outside the model's vocabulary"),
                          (["--prime", "the", "--top-p", "1.5"], "--top-p is 1.5"),
                          (["--prime", "the", "--temperature", "-1"],
                           "temperature -1.0 is not allowed")):
        with pytest.raises(SystemExit) as exit_:
            sample_job.main(["--checkpoint", char_run, *argv])
        assert exit_.value.code == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err and message in err, err


def test_export_to_s3_gives_the_jobs_texts_in_one_batch(stateful, char_run, tmp_path,
                                                        monkeypatch, capsys):
    """An s3:// output through a real S3-compatible server: the whole SavedModel
    arrives, nothing is left beside it, and all 42 requests in one call of its
    stateful graph (seeds of different lengths, padded in the graph) give the
    texts the two actors gave in their own batches."""
    boto3 = pytest.importorskip("boto3")
    import tensorflow as tf
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        for key, value in {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "test",
                           "AWS_SECRET_ACCESS_KEY": "test",
                           "AWS_DEFAULT_REGION": "us-east-1"}.items():
            monkeypatch.setenv(key, value)
        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="models")
        export.main(["--checkpoint", char_run, "--output", "s3://models/charlm/v1",
                     *map(str, STATEFUL)])
        assert "to s3://models/charlm/v1" in capsys.readouterr().out
        fs, _ = pafs.FileSystem.from_uri("s3://models/charlm")
        names = {i.path for i in fs.get_file_info(pafs.FileSelector("models", recursive=True))}
        assert "models/charlm/v1/saved_model.pb" in names
        assert "models/charlm/v1/assets.extra/charlm.json" in names
        assert not [n for n in names if ".tmp-" in n]
        local = tmp_path / "v1"
        pafs.copy_files("models/charlm/v1", str(local), source_filesystem=fs,
                        destination_filesystem=pafs.LocalFileSystem())
    finally:
        server.stop()
    df = stateful[1]
    got = tf.saved_model.load(str(local)).signatures["generate"](
        seed=tf.constant(df["seed_text"].tolist()), temperature=tf.constant(df["temperature"]),
        length=tf.fill([len(df)], 24), rng_seed=tf.constant(df["rng_seed"]))
    assert [t.decode() for t in got["text"].numpy()] == df["text"].tolist()
    np.testing.assert_allclose(got["mean_logprob"].numpy(), df["mean_logprob"], atol=1e-9)


@pytest.mark.parametrize("argv, message", [
    (["--top-p", "0"], "--top-p is 0.0"),
    (["--top-k", "-1"], "--top-k is -1"),
    (["--checkpoint", "/nonexistent/run"], "does not exist"),
])
def test_export_bad_input_is_one_line_and_writes_nothing(argv, message, char_run, tmp_path,
                                                         capsys):
    out = tmp_path / "model"
    with pytest.raises(SystemExit) as exit_:
        export.main(["--checkpoint", char_run, "--output", str(out), *argv])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and message in err, err
    assert leftovers(out) == []


def test_export_refuses_an_existing_output(char_run, tmp_path, capsys):
    out = tmp_path / "model"
    out.mkdir()
    (out / "keep").write_text("x")
    with pytest.raises(SystemExit) as exit_:
        export.main(["--checkpoint", char_run, "--output", str(out)])
    assert exit_.value.code == 2 and "already exists" in capsys.readouterr().err
    assert os.listdir(out) == ["keep"]


# -- a byte-level run: UTF-8 in every job ---------------------------------------

@pytest.fixture(scope="module")
def byte_job(byte_run, tmp_path_factory):
    """The job's defaults (window context) on accented Latin and CJK seeds, one
    given in capitals, and two held-out seeds the run recorded."""
    out = tmp_path_factory.mktemp("gen") / "bytes"
    path = run_job("--checkpoint", byte_run, "--seed", "ÉLAN café ", "--seed", "東京 日本語 ",
                   "--num-seeds", 2, "--temperatures", "0,0.8", "--length", 60, "--output", out)
    return pd.read_parquet(path)


def multi_byte(text: str) -> bool:
    return any(ord(c) > 0x7F and c != "\ufffd" for c in text)


def test_byte_level_texts_are_utf8(byte_job, byte_run):
    df = byte_job
    meta = checkpoint.read_meta(best(byte_run))
    assert df["seed_text"].unique().tolist()[:3] == [
        meta["corpus"]["seed_text"], "élan café ", "東京 日本語 "]  # normalised as the corpus
    assert multi_byte(meta["corpus"]["seed_text"])
    for text in df["text"]:
        assert text.encode("utf-8").decode("utf-8") == text  # no lone surrogate, no mojibake
        assert len(text.encode("utf-8")) <= 60 + 2 * text.count("\ufffd")
    assert not df["text"].str.contains("Ã").any()  # "é" read as two Latin-1 characters
    assert df["text"].map(multi_byte).all()
    assert (df["length"] == df["text"].str.len()).all()  # characters, not bytes
    assert (df["length"] < 60).any()


def test_byte_level_sampler_and_export_give_the_jobs_texts(byte_job, byte_run, tmp_path,
                                                          capsys):
    """The same requests through the exported graph without charlm (one batch,
    mixed lengths) and the quick sampler (one at a time) give the job's texts;
    a length that ends inside a character ends both at the last whole one."""
    df = byte_job
    rows = df.copy()
    assert rows.at[3, "seed_text"] == "élan café " and rows.at[3, "temperature"] == 0.8
    rows.at[3, "seed_text"] = "ÉLAN CAFÉ "  # normalised in the graph and by the sampler
    lengths = [60] * len(rows)
    # A request cut one byte into a multi-byte character, in both.
    i, p = next((i, p) for i, text in enumerate(df["text"]) for p, c in enumerate(text)
                if len(c.encode()) > 1 and "\ufffd" not in text[:p + 1])
    cut_length = len(df["text"].iloc[i][:p].encode()) + 1
    rows = pd.concat([rows, rows.iloc[[i]]])
    lengths.append(cut_length)
    want = df["text"].tolist() + [df["text"].iloc[i][:p]]

    out = tmp_path / "model"
    export.main(["--checkpoint", byte_run, "--output", str(out)])
    assert f"to {out}" in capsys.readouterr().out and leftovers(out) == ["model"]
    got = load_exported(out, rows, lengths, tmp_path)
    assert got["text"] == want
    np.testing.assert_allclose(got["mean_logprob"][:len(df)], df["mean_logprob"], atol=1e-9)

    for k, length in ((3, 60), (len(rows) - 1, cut_length)):
        row = rows.iloc[k]
        streamed = sample(SampleOptions(
            checkpoint=byte_run, prime=row.seed_text, temperature=row.temperature,
            length=length, sample_index=int(row.sample_index)), out=io.StringIO())
        assert streamed == want[k]


LOAD_WITHOUT_CHARLM = """
import json, sys
class NoCharlm:  # the venv has charlm installed (editable): make it unimportable
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in ("charlm", "jobs"):
            raise ImportError("charlm is not installed here")
sys.meta_path.insert(0, NoCharlm())
import tensorflow as tf
requests = json.load(sys.stdin)
generate = tf.saved_model.load(sys.argv[1]).signatures["generate"]
out = generate(seed=tf.constant(requests["seed"]),
               temperature=tf.constant(requests["temperature"], tf.float64),
               length=tf.constant(requests["length"], tf.int32),
               rng_seed=tf.constant(requests["rng_seed"], tf.int64))
assert not any(m.startswith("charlm") for m in sys.modules)
print(json.dumps({"text": [t.decode() for t in out["text"].numpy()],
                  "mean_logprob": out["mean_logprob"].numpy().tolist()}))
"""


def load_exported(path, rows: pd.DataFrame, lengths: list[int], cwd) -> dict:
    """Run the SavedModel's generate signature in `python -I` without charlm."""
    requests = {"seed": rows["seed_text"].tolist(), "temperature": rows["temperature"].tolist(),
                "length": lengths, "rng_seed": [int(s) for s in rows["rng_seed"]]}
    done = subprocess.run([sys.executable, "-I", "-c", LOAD_WITHOUT_CHARLM, str(path)],
                          input=json.dumps(requests), capture_output=True, text=True,
                          timeout=300, cwd=cwd, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)
