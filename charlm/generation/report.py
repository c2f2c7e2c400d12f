"""How generated text changes with temperature, from a jobs.generate output:
a table on the console and a PNG chart beside the output.

Per sample, then averaged per (context mode, temperature): mean
log-probability (what the model thinks of its own text), distinct words /
words (variety), share of words found in the run's corpus (real words vs
invented ones), and the rate of repeated word 4-grams (the loops of low
temperatures).
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from charlm import charts, storage
from charlm.errors import CharlmError
from charlm.model import checkpoint

WORD = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)*")
METRICS = {  # column → chart title
    "mean_logprob": "mean log-probability (nats/char)",
    "distinct_words": "distinct words / words",
    "in_vocab": "words found in the corpus",
    "repeat_4gram": "repeated word 4-grams",
}


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


def repeated_ngram_rate(tokens: list[str], n: int = 4) -> float:
    """Share of a text's word n-grams that already occurred earlier in it."""
    grams = [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]
    return 1 - len(set(grams)) / len(grams) if grams else np.nan


def summarize(df: pd.DataFrame, vocabulary: set[str]) -> pd.DataFrame:
    """One row per (context_mode, temperature)."""
    tokens = df["text"].map(words)
    n = tokens.map(len).replace(0, np.nan)
    per_sample = pd.DataFrame({
        "context_mode": df["context_mode"], "temperature": df["temperature"],
        "mean_logprob": df["mean_logprob"],
        "distinct_words": tokens.map(lambda t: len(set(t))) / n,
        "in_vocab": tokens.map(lambda t: sum(w in vocabulary for w in t)) / n,
        "repeat_4gram": tokens.map(repeated_ngram_rate),
    })
    grouped = per_sample.groupby(["context_mode", "temperature"])
    return grouped.size().rename("samples").to_frame().join(grouped.mean()).reset_index()


def load(output: str) -> pd.DataFrame:
    fs, path = storage.resolve(output)
    try:
        return pq.read_table(path, filesystem=fs).to_pandas()
    except (OSError, ValueError) as e:  # missing path, or not Parquet
        raise CharlmError(f"{output} is not a jobs.generate output ({str(e).splitlines()[0]}); "
                          "pass the --output of a generation job") from e


def vocabulary(df: pd.DataFrame) -> tuple[set[str], str]:
    """The generated words found in the run's corpus, else (corpus
    unavailable) the words of the seed texts. The corpus streams past one
    stretch at a time (charlm.data.parts.recorded_texts): memory is the
    generated words, whatever the corpus's size."""
    from charlm.data.parts import recorded_texts

    uri = df["checkpoint"].iloc[0]
    wanted = {w for text in df["text"] for w in words(text)}
    try:
        info = checkpoint.read_meta(uri).get("corpus") or {}
        found: set[str] = set()
        for text in recorded_texts(info):
            found |= wanted.intersection(words(text))
        return found, f"words of corpus {info.get('name')}"
    except (CharlmError, OSError, ValueError) as e:
        return (set(words(" ".join(df["seed_text"].unique()))),
                f"words of the seed texts (corpus unavailable: {str(e).splitlines()[0]})")


def chart(table: pd.DataFrame, path: str) -> None:
    """The four metrics against temperature, one line per context mode."""
    fig, axes = charts.pyplot().subplots(2, 2, figsize=(10, 7), sharex=True)
    for ax, (column, title) in zip(axes.flat, METRICS.items(), strict=True):
        for mode, rows in table.groupby("context_mode"):
            ax.plot(rows["temperature"], rows[column], marker="o", label=mode)
        ax.set_title(title)
        ax.grid(alpha=0.3)
    for ax in axes[1]:
        ax.set_xlabel("temperature")
    axes[0, 0].legend(title="context")
    fig.suptitle("charlm generation by temperature")
    charts.save(fig, path, "pass --chart with a writable path")


def report(output: str, chart_path: str | None = None) -> str:
    """Print the table, write the chart (default `<output>.report.png`); returns its path."""
    output = storage.normalize(output)
    df = load(output)
    if df.empty:
        raise CharlmError(f"{output} holds no samples; run jobs.generate again")
    words_of, source = vocabulary(df)
    table = summarize(df, words_of)
    print(f"{len(df):,} samples from {df['checkpoint'].iloc[0]}; "
          f"vocabulary: {source} ({len(words_of):,} distinct generated or seed words)")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    chart_path = storage.normalize(chart_path or f"{output.rstrip('/')}.report.png")
    chart(table, chart_path)
    print(f"chart: {chart_path}", flush=True)
    return chart_path

