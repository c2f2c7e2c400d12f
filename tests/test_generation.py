"""jobs.generate end to end on a local Ray: a tiny checkpoint, real actors,
real Parquet read back with pandas."""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pyarrow.fs as pafs
import pytest
import ray

from charlm import runtime
from charlm.config import TrainConfig
from charlm.data.corpus import load_corpus
from charlm.data.windows import holdout_start, split_xy, windows
from charlm.generation.job import GenerateOptions, batch_size_for, collect_seeds
from charlm.model import checkpoint
from charlm.model.network import build_model, compile_model
from jobs import generate as job

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLUMNS = ["run_id", "created_at", "checkpoint", "checkpoint_epoch", "corpus", "seed_text",
           "temperature", "sample_index", "rng_seed", "context_mode", "top_k", "top_p", "length",
           "text", "mean_logprob", "seconds", "generated_at"]


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=4, include_dashboard=False,
                 runtime_env={"env_vars": runtime.worker_env(False)})
    yield
    if started:
        ray.shutdown()


@pytest.fixture(scope="module")
def corpus():
    return load_corpus("python-docs")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, corpus):
    """A run with one checkpoint of a tiny model, trained a few hundred steps."""
    config = TrainConfig(corpus="python-docs", units=32, maxlen=12, step=12, objective="all",
                         batch_size=64, epochs=1)
    model = build_model(config, len(corpus.vocab))
    compile_model(model, config)
    x, y = split_xy(windows(corpus.ids[:100_000].astype(np.int32), config.maxlen,
                            config.step), "all")
    model.fit(x, y, batch_size=64, steps_per_epoch=150, epochs=1, verbose=0)
    run = tmp_path_factory.mktemp("runs") / "docs-lstm"
    directory = run / "checkpoint_epoch_0001"
    directory.mkdir(parents=True)
    checkpoint.save(str(directory), model, {
        "format": 1, "run": "docs-lstm", "vocab": corpus.vocab, "config": config.to_dict(),
        "epoch": 1, "corpus": corpus.info(), "metrics": {"loss": 2.0, "val_loss": 2.1}})
    return str(run)


def run_job(*argv) -> str:
    parser = argparse.ArgumentParser()
    job.add_arguments(parser)
    return job.run(parser.parse_args([str(a) for a in argv]))


def leftovers(path) -> list[str]:
    """Anything at the output path, or temporary directories beside it."""
    parent, name = os.path.split(str(path))
    return [f for f in os.listdir(parent) if f == name or f.startswith(f".{name}.tmp")]


REQUEST = ["--num-seeds", 3, "--seed", "the ", "--temperatures", "0,0.5,1.0",
           "--samples-per-seed", 2, "--length", 24]


@pytest.fixture(scope="module")
def first(run_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("gen") / "out"
    path = run_job("--checkpoint", run_dir, *REQUEST, "--batch-size", 64, "--output", out)
    return path, pd.read_parquet(path)


def test_output_schema_and_every_request_present(first, run_dir, corpus, capsys):
    path, df = first
    assert list(df.columns) == COLUMNS
    assert str(df["created_at"].dtype) == "datetime64[us, UTC]"
    assert str(df["generated_at"].dtype) == "datetime64[us, UTC]"
    assert (df["generated_at"] > df["created_at"]).all()
    for column in ("checkpoint_epoch", "sample_index", "rng_seed", "top_k", "length"):
        assert df[column].dtype == np.int64
    for column in ("temperature", "top_p", "mean_logprob", "seconds"):
        assert df[column].dtype == np.float64
    assert df["run_id"].nunique() == 1
    assert set(df["checkpoint"]) == {os.path.join(run_dir, "checkpoint_epoch_0001")}
    assert set(df["corpus"]) == {"python-docs"} and set(df["checkpoint_epoch"]) == {1}

    recipe = corpus.text[:12]
    tail = corpus.text[holdout_start(len(corpus.text), 0.1):]
    seeds = df["seed_text"].unique().tolist()
    assert seeds[:2] == [recipe, "the "] and len(seeds) == 5
    assert all(len(s) == 12 and s in tail for s in seeds[2:])
    assert df.iloc[0]["seed_text"] == recipe  # the recipe's experiment is row 0
    keys = set(zip(df.seed_text, df.temperature, df.sample_index, strict=True))
    assert keys == set(itertools.product(seeds, [0.0, 0.5, 1.0], [0, 1]))
    assert len(df) == len(keys) == 30

    assert (df["text"].str.len() == 24).all() and (df["length"] == 24).all()
    assert set(df["context_mode"]) == {"window"} and set(df["top_p"]) == {1.0}
    assert (df["mean_logprob"] < 0).all() and (df["seconds"] > 0).all()
    greedy = df[df.temperature == 0].groupby("seed_text")["text"].nunique()
    assert (greedy == 1).all()  # T = 0: every sample of a seed is the argmax path
    assert df["rng_seed"].nunique() == 30


def test_same_texts_whatever_the_batches_and_actors(first, run_dir):
    """Rerun on two actors, over the first output (--overwrite), with the
    default batch size: every actor gets a batch (30 requests: 2 of 15), where
    the first run took all 30 in one batch of up to 64."""
    path, before = first
    again = run_job("--checkpoint", run_dir, *REQUEST, "--concurrency", 2,
                    "--cpus-per-actor", 1, "--output", path, "--overwrite")
    after = pd.read_parquet(again)
    assert after.groupby("generated_at").size().tolist() == [15, 15]
    assert before.groupby("generated_at").size().tolist() == [30]
    assert after["run_id"].iloc[0] != before["run_id"].iloc[0]
    assert after["rng_seed"].tolist() == before["rng_seed"].tolist()  # request order kept
    key = ["seed_text", "temperature", "sample_index"]
    merged = before.merge(after, on=key, suffixes=("", "_again"))
    assert len(merged) == 30
    assert (merged["text"] == merged["text_again"]).all()
    assert (merged["rng_seed"] == merged["rng_seed_again"]).all()
    np.testing.assert_allclose(merged["mean_logprob"], merged["mean_logprob_again"], atol=1e-9)
    assert leftovers(path) == [os.path.basename(path)]


def test_default_batch_is_up_to_1024_requests_and_one_per_actor_at_least():
    assert batch_size_for(4096, 1) == 1024
    assert batch_size_for(4096, 8) == 512
    assert batch_size_for(30, 2) == 15 and batch_size_for(1, 4) == 1


def test_stateful_mode_with_top_k_and_top_p(run_dir, tmp_path, capsys):
    out = tmp_path / "stateful"
    path = run_job("--checkpoint", run_dir, "--seed", "def f(x):", "--seed", "a",
                   "--temperatures", "1.0", "--length", 50, "--context-mode", "stateful",
                   "--top-k", 3, "--top-p", 0.8, "--output", out)
    df = pd.read_parquet(path)
    assert df["seed_text"].tolist() == ["def f(x):", "a"]  # explicit seeds only
    assert set(df["context_mode"]) == {"stateful"} and set(df["top_k"]) == {3}
    assert set(df["top_p"]) == {0.8}
    assert (df["text"].str.len() == 50).all()
    assert f"wrote 2 samples to {out}" in capsys.readouterr().out

    # The exported stateful graph (seeds of different lengths, padded on the left
    # in the graph) gives the same texts.
    import tensorflow as tf

    from jobs import export

    model = tmp_path / "model"
    export.main(["--checkpoint", run_dir, "--output", str(model), "--context-mode", "stateful",
                 "--top-k", "3", "--top-p", "0.8"])
    got = tf.saved_model.load(str(model)).signatures["generate"](
        seed=tf.constant(df["seed_text"].tolist()), temperature=tf.constant(df["temperature"]),
        length=tf.constant([50, 50]), rng_seed=tf.constant(df["rng_seed"]))
    assert [t.decode() for t in got["text"].numpy()] == df["text"].tolist()


def test_refuses_an_existing_output(first, run_dir, capsys):
    path, before = first
    mtimes = {f: os.path.getmtime(os.path.join(path, f)) for f in os.listdir(path)}
    with pytest.raises(SystemExit) as exit_:
        job.main(["--checkpoint", run_dir, "--output", path])
    assert exit_.value.code == 2
    assert "already exists" in capsys.readouterr().err
    assert {f: os.path.getmtime(os.path.join(path, f)) for f in os.listdir(path)} == mtimes


def test_failure_mid_job_leaves_nothing(run_dir, tmp_path):
    """The checkpoint passes the driver's check (its charlm.json) but the actors
    cannot load its weights."""
    broken = tmp_path / "broken"
    shutil.copytree(os.path.join(run_dir, "checkpoint_epoch_0001"), broken)
    data = next(broken.glob("state.data-*"))
    data.write_bytes(data.read_bytes()[:100])
    out = tmp_path / "out"
    with pytest.raises(Exception, match="cannot be loaded"):
        run_job("--checkpoint", broken, "--length", 10, "--output", out)
    assert leftovers(out) == []


def _write(path, text) -> str:
    path.write_text(text, encoding="utf-8")
    return str(path)


@pytest.mark.parametrize("case, message", [
    ("missing checkpoint", "does not exist"),
    ("unloadable checkpoint", "cannot be loaded"),
    ("unknown characters", "outside the model's vocabulary: '€' '☃'"),
    ("empty seeds file", "holds no seed"),
    ("length 0", "--length is 0"),
    ("top-p 0", "--top-p is 0.0"),
    ("temperature not a number", "'warm' is not a number"),
    ("negative temperature", "-0.5 is not allowed"),
    ("no temperature", "lists no temperature"),
    ("unwritable output", "cannot be written"),
    ("corpus changed", "pass seeds with --seeds-file or --seed"),
    ("no GPU", "--use-gpu needs 1 GPU(s)"),
])
def test_bad_input_is_one_line_and_writes_nothing(case, message, run_dir, tmp_path, capsys):
    garbage = tmp_path / "garbage"
    garbage.mkdir()
    _write(garbage / checkpoint.META, "{not json")
    changed = tmp_path / "changed"
    shutil.copytree(os.path.join(run_dir, "checkpoint_epoch_0001"), changed)
    meta = json.loads((changed / checkpoint.META).read_text())
    meta["corpus"]["sha256"] = "0" * 64
    _write(changed / checkpoint.META, json.dumps(meta))
    out = tmp_path / "out"
    a_file = _write(tmp_path / "a_file", "x")
    argv = {
        "missing checkpoint": ["--checkpoint", tmp_path / "nope"],
        "unloadable checkpoint": ["--checkpoint", garbage],
        "unknown characters": ["--seed", "snow☃man €5"],
        "empty seeds file": ["--seeds-file", _write(tmp_path / "seeds.txt", "\n  \n")],
        "length 0": ["--length", 0],
        "top-p 0": ["--top-p", 0],
        "temperature not a number": ["--temperatures", "0.5,warm"],
        "negative temperature": ["--temperatures", "1,-0.5"],
        "no temperature": ["--temperatures", " , "],
        "unwritable output": ["--output", os.path.join(a_file, "out")],
        "corpus changed": ["--checkpoint", changed, "--num-seeds", 2],
        "no GPU": ["--use-gpu"],
    }[case]
    defaults = {"--checkpoint": run_dir, "--output": out}
    for flag, value in defaults.items():
        if flag not in argv:
            argv += [flag, value]
    with pytest.raises(SystemExit) as exit_:
        job.main([str(a) for a in argv])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and message in err, err
    assert leftovers(out) == []


def test_unknown_characters_can_be_skipped(run_dir):
    meta = checkpoint.read_meta(os.path.join(run_dir, "checkpoint_epoch_0001"))
    options = GenerateOptions(checkpoint=run_dir, output="unused", seed=["Snow☃Man"],
                              unknown_chars="skip")
    assert collect_seeds(options, meta) == ["snowman"]  # and lower-cased like the corpus


def test_seeds_are_distinct_and_in_order(run_dir, corpus):
    meta = checkpoint.read_meta(os.path.join(run_dir, "checkpoint_epoch_0001"))
    options = GenerateOptions(checkpoint=run_dir, output="unused", seed=["b", "a", "b"],
                              num_seeds=200)
    seeds = collect_seeds(options, meta)
    assert seeds[:3] == [corpus.text[:12], "b", "a"]
    assert len(seeds) == len(set(seeds)) > 100


def test_quick_sampler_streams_the_jobs_text_without_ray(first, run_dir):
    """jobs.sample in a fresh process: the same text as the job's row for the same
    request (seed, temperature, sample index, --rng-seed), and Ray never imported."""
    path, df = first
    rows = df[(df.sample_index == 1) & (df.temperature == 1.0)].tail(1)
    for row in rows.itertuples():
        code = ("import sys; from jobs import sample; sample.main(sys.argv[1:]); "
                "assert 'ray' not in sys.modules, 'imported ray'")
        argv = ["--checkpoint", run_dir, "--prime", row.seed_text,
                "--temperature", row.temperature, "--length", 24, "--sample-index", 1]
        done = subprocess.run([sys.executable, "-c", code, *map(str, argv)],
                              capture_output=True, text=True, timeout=300,
                              env={**os.environ, "PYTHONPATH": ROOT})
        assert done.returncode == 0, done.stderr
        assert done.stdout == row.seed_text + row.text + "\n"
        assert f"rng_seed {row.rng_seed})" in done.stderr


def test_quick_sampler_bad_input_is_one_line(run_dir, capsys):
    from jobs import sample

    for argv, message in ((["--prime", "snow☃"], "outside the model's vocabulary"),
                          (["--prime", "the", "--top-p", "1.5"], "--top-p is 1.5"),
                          (["--prime", "the", "--temperature", "-1"], "--temperature is -1.0")):
        with pytest.raises(SystemExit) as exit_:
            sample.main(["--checkpoint", run_dir, *argv])
        assert exit_.value.code == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err and message in err, err


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


def test_exported_model_gives_the_jobs_text_without_charlm(first, run_dir, tmp_path, capsys):
    """jobs.export → SavedModel; loaded in a process that cannot import charlm, its
    generate signature returns the job's text for each request (rng_seed from the
    Parquet output), in one batch with mixed lengths (a shorter one is a prefix)."""
    from jobs import export

    path, df = first
    out = tmp_path / "model"
    export.main(["--checkpoint", run_dir, "--output", str(out)])
    assert f"to {out}" in capsys.readouterr().out
    assert (out / "saved_model.pb").is_file() and leftovers(out) == ["model"]
    # Seeds are normalised in the graph as jobs.generate normalises them.
    rows = pd.concat([df, df.head(1).assign(seed_text=df["seed_text"][0].upper())])
    lengths = [24 if i % 3 else 10 for i in range(len(rows))]
    got = load_exported(out, rows, lengths, tmp_path)
    assert got["text"] == [t[:n] for t, n in zip(rows["text"], lengths, strict=True)]
    full = np.array(lengths) == 24
    np.testing.assert_allclose(np.array(got["mean_logprob"])[full], rows["mean_logprob"][full],
                               atol=1e-9)


def test_export_to_s3(first, run_dir, tmp_path, monkeypatch):
    """An s3:// output through a real S3-compatible server: the whole SavedModel
    arrives, nothing is left beside it, and it loads and generates the job's text."""
    boto3 = pytest.importorskip("boto3")
    from moto.server import ThreadedMotoServer

    from jobs import export

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
        export.main(["--checkpoint", run_dir, "--output", "s3://models/charlm/v1"])
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
    path, df = first
    rows = df.head(3)
    assert load_exported(local, rows, [24] * 3, tmp_path)["text"] == rows["text"].tolist()


@pytest.mark.parametrize("argv, message", [
    (["--top-p", "0"], "--top-p is 0.0"),
    (["--top-k", "-1"], "--top-k is -1"),
    (["--checkpoint", "/nonexistent/run"], "does not exist"),
])
def test_export_bad_input_is_one_line_and_writes_nothing(argv, message, run_dir, tmp_path,
                                                         capsys):
    from jobs import export

    out = tmp_path / "model"
    with pytest.raises(SystemExit) as exit_:
        export.main(["--checkpoint", run_dir, "--output", str(out), *argv])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and message in err, err
    assert leftovers(out) == []


def test_export_refuses_an_existing_output(run_dir, tmp_path, capsys):
    from jobs import export

    out = tmp_path / "model"
    out.mkdir()
    (out / "keep").write_text("x")
    with pytest.raises(SystemExit) as exit_:
        export.main(["--checkpoint", run_dir, "--output", str(out)])
    assert exit_.value.code == 2 and "already exists" in capsys.readouterr().err
    assert os.listdir(out) == ["keep"]
