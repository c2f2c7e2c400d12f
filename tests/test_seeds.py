"""Generation's held-out seeds: from what training recorded (no corpus read),
else from the corpus; asking for more distinct seeds than there are is one line."""

from __future__ import annotations

import pytest

from charlm.config import TrainConfig
from charlm.data.corpus import load_corpus
from charlm.data.windows import holdout_start
from charlm.errors import CharlmError
from charlm.generation.job import GenerateOptions, collect_seeds


def meta(corpus: dict, maxlen: int = 12) -> dict:
    return {"config": TrainConfig(maxlen=maxlen).to_dict(), "vocab": "abcdefghijs ",
            "corpus": corpus}


RECORDED = {"name": "/nowhere/books", "source": "/nowhere/books", "sha256": "0" * 64,
            "seed_text": "abcdefghijab", "heldout_seeds": [f"seed {c}" for c in "abcdefghij"]}


def test_seeds_come_from_what_training_recorded_without_the_corpus():
    seeds = collect_seeds(GenerateOptions(checkpoint="x", output="y", num_seeds=4),
                          meta(RECORDED))
    assert seeds == ["abcdefghijab", "seed a", "seed d", "seed g", "seed j"]


def test_more_seeds_than_recorded_is_refused_in_one_line():
    with pytest.raises(CharlmError, match=r"--num-seeds 11 asks for more distinct held-out "
                                          r"seeds than .* \(10\); pass --num-seeds 10"):
        collect_seeds(GenerateOptions(checkpoint="x", output="y", num_seeds=11), meta(RECORDED))


def test_more_seeds_than_the_held_out_tail_holds_is_refused():
    corpus = load_corpus("python-docs")
    info = meta(corpus.info())
    info["vocab"] = corpus.vocab
    tail = len(corpus.text) - holdout_start(len(corpus.text), 0.1) - 12 + 1
    with pytest.raises(CharlmError, match=f"gives \\({tail}\\)"):
        collect_seeds(GenerateOptions(checkpoint="x", output="y", num_seeds=tail + 1), info)
