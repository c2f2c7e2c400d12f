"""charlm.report / jobs.report on a hand-made generation output."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from charlm.generation.report import repeated_ngram_rate, summarize, words
from charlm.model import checkpoint
from jobs import report as job


def output(tmp_path, checkpoint_uri: str) -> str:
    rows = [("window", 0.2, "the the the the the the", -0.3),
            ("window", 0.2, "the the the the the the", -0.5),
            ("window", 1.0, "the class returns zqxv value", -2.0),
            ("stateful", 1.0, "import the module", -1.5)]
    df = pd.DataFrame(rows, columns=["context_mode", "temperature", "text", "mean_logprob"])
    df["checkpoint"] = checkpoint_uri
    df["seed_text"] = "the class of the module"
    path = tmp_path / "gen"
    path.mkdir()
    df.to_parquet(path / "part-0.parquet")
    return str(path)


def test_metrics():
    assert words("It's a Class, 3 times!") == ["it's", "a", "class", "times"]
    assert repeated_ngram_rate("a b c d a b c d".split()) == pytest.approx(1 / 5)
    df = pd.DataFrame({"context_mode": ["window"] * 2, "temperature": [0.5, 0.5],
                       "text": ["the the the the the the", "a zz"], "mean_logprob": [-1, -2]})
    row = summarize(df, {"the", "a"}).iloc[0]
    assert row["samples"] == 2 and row["mean_logprob"] == -1.5
    assert row["distinct_words"] == pytest.approx((1 / 6 + 1) / 2)
    assert row["in_vocab"] == pytest.approx((1 + 0.5) / 2)
    assert row["repeat_4gram"] == pytest.approx(2 / 3)  # the 2-word sample has no 4-gram


def test_report_prints_a_table_and_writes_a_chart(tmp_path, capsys):
    ckpt = tmp_path / "checkpoint_epoch_0001"
    ckpt.mkdir()
    (ckpt / checkpoint.META).write_text(json.dumps({"corpus": {
        "name": "python-docs", "source": "pydoc_data.topics", "keep_case": False,
        "keep_newlines": False, "sha256": _python_docs_sha256()}}))
    out = output(tmp_path, str(ckpt))
    job.main([out])
    printed = capsys.readouterr().out
    assert "words of corpus python-docs" in printed
    lines = [line.split() for line in printed.splitlines()]
    assert ["stateful", "1.000", "1"] == lines[2][:3]
    assert ["window", "0.200", "2", "-0.400", "0.167", "1.000", "0.667"] == lines[3]
    assert ["window", "1.000", "1"] == lines[4][:3] and lines[4][5] == "0.800"  # zqxv
    chart = f"{out}.report.png"
    assert f"chart: {chart}" in printed
    with open(chart, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_falls_back_to_the_seed_words_without_the_corpus(tmp_path, capsys):
    out = output(tmp_path, str(tmp_path / "gone"))
    chart = tmp_path / "c.png"
    assert job.run(job_args(out, chart)) == str(chart) and chart.exists()
    assert "words of the seed texts" in capsys.readouterr().out


def test_missing_output_is_an_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        job.main([str(tmp_path / "nothing")])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.startswith("error: ")
    assert not (tmp_path / "nothing.report.png").exists()


def job_args(out, chart):
    import argparse

    parser = argparse.ArgumentParser()
    job.add_arguments(parser)
    return parser.parse_args([str(out), "--chart", str(chart)])


def _python_docs_sha256() -> str:
    from charlm.data.corpus import load_corpus

    return load_corpus("python-docs").sha256


def test_a_directory_corpus_streams_past_in_stretches(tmp_path, monkeypatch, capsys):
    """Words of every file count, read one stretch at a time against the hash
    training recorded (a hash of per-stretch hashes)."""
    import hashlib

    from charlm.data import parts

    monkeypatch.setattr(parts, "STRETCH_BYTES", 64)
    books = tmp_path / "books"
    books.mkdir()
    (books / "a.txt").write_text("the class of the module " * 6)
    (books / "b.txt").write_text("import returns value " * 6)
    stretched = [(row["key"], row["index"], hashlib.sha256(text.encode()).hexdigest())
                 for row, text in parts.iter_texts(str(books))]
    assert len(stretched) > 4
    ckpt = tmp_path / "checkpoint_epoch_0001"
    ckpt.mkdir()
    (ckpt / checkpoint.META).write_text(json.dumps({"corpus": {
        "name": str(books), "source": str(books), "keep_case": False, "keep_newlines": False,
        "sha256": parts.corpus_sha256(stretched)}}))
    job.main([output(tmp_path, str(ckpt))])
    lines = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert f"corpus {books}" in " ".join(lines[0])
    assert ["window", "1.000", "1"] == lines[4][:3] and lines[4][5] == "0.800"  # zqxv only
