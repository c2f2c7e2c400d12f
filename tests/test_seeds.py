"""Generation's seeds, from what training recorded in a checkpoint's
charlm.json (no corpus read): row order, normalisation, distinctness, the
recipe's seed, characters outside the vocabulary, and too many asked for."""

from __future__ import annotations

import pytest

from charlm.config import TrainConfig
from charlm.data.corpus import BYTES_VOCAB
from charlm.errors import CharlmError
from charlm.generation.seeds import collect_seeds

RECORDED = {"name": "/nowhere/books", "source": "/nowhere/books", "sha256": "0" * 64,
            "seed_text": "abcdefghijab", "heldout_seeds": [f"seed {c}" for c in "abcdefghij"]}


def meta(vocab: str = "abcdefghijmnosw ") -> dict:
    return {"config": TrainConfig(maxlen=12).to_dict(), "vocab": vocab, "corpus": RECORDED}


def test_held_out_seeds_come_from_what_training_recorded():
    assert collect_seeds(meta(), num_seeds=4) == [
        "abcdefghijab", "seed a", "seed d", "seed g", "seed j"]  # the recipe's seed first


def test_given_seeds_are_normalised_distinct_and_in_order():
    seeds = collect_seeds(meta(), seed=["B", "a", "b\nc"], num_seeds=2)
    assert seeds == ["abcdefghijab", "b", "a", "b c", "seed a", "seed j"]
    assert collect_seeds(meta(), seed=["a"]) == ["a"]  # given seeds alone: no recipe seed
    assert collect_seeds(meta(), seed=["a"], recipe_seed=True) == ["abcdefghijab", "a"]
    assert collect_seeds(meta(), num_seeds=1, recipe_seed=False) == ["seed a"]


def test_characters_outside_the_vocabulary_fail_or_are_skipped():
    with pytest.raises(CharlmError, match=r"seed 1 \('snow☃man'\).*'☃'; remove them or pass "
                                          r"--unknown-chars skip"):
        collect_seeds(meta(), seed=["Snow☃Man"])
    assert collect_seeds(meta(), seed=["Snow☃Man"], unknown_chars="skip") == ["snowman"]
    with pytest.raises(CharlmError, match="no character left"):
        collect_seeds(meta(), seed=["☃"], unknown_chars="skip")
    # A byte-level model takes any text, encoded as UTF-8.
    assert collect_seeds(meta(BYTES_VOCAB), seed=["Snow☃Man 東京"]) == ["snow☃man 東京"]


def test_more_seeds_than_recorded_is_refused_in_one_line():
    with pytest.raises(CharlmError, match=r"--num-seeds 11 asks for more distinct held-out "
                                          r"seeds than .* \(10\); pass --num-seeds 10"):
        collect_seeds(meta(), num_seeds=11)


def test_seeds_a_checkpoint_did_not_record_are_asked_for():
    bare = {**meta(), "corpus": {}}
    assert collect_seeds(bare, seed=["a"]) == ["a"]  # nothing recorded is needed
    with pytest.raises(CharlmError, match="records no held-out seeds; pass seeds with --seed"):
        collect_seeds(bare, seed=["a"], num_seeds=1, recipe_seed=False)
    with pytest.raises(CharlmError, match="records no recipe seed; pass seeds with --seed or "
                                          "--seeds-file and --no-recipe-seed"):
        collect_seeds(bare)
