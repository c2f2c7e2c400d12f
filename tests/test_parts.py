"""charlm.parts on a local Ray: a directory (or a big file, in stretches) read by
Ray Data gives each file's seed windows exactly, parts never cross files, the
held-out tail of each file, the vocabulary of a direct read; an s3:// prefix
through a real S3-compatible server."""

from __future__ import annotations

import os

import numpy as np
import pytest
import ray

from charlm.config import VAL_MAXLEN, VAL_STEP
from charlm.data import parts
from charlm.data.corpus import BYTES_VOCAB, decode, encode, load_corpus, normalise
from charlm.data.windows import holdout_start, split, windows
from charlm.errors import CharlmError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NIETZSCHE = next((p for p in (os.path.join(ROOT, "..", "shared", "data", "nietzsche.txt"),
                              "/work/shared/data/nietzsche.txt") if os.path.exists(p)), "")


@pytest.fixture(scope="module")
def s3_server(ray_local, s3_env):
    """The session's S3 server (Ray's workers reach it) with a bucket of this module's."""
    import boto3

    client = boto3.client("s3", endpoint_url=s3_env["AWS_ENDPOINT_URL"],
                          aws_access_key_id="testing", aws_secret_access_key="testing",
                          region_name="us-east-1")
    client.create_bucket(Bucket="corpus")
    return client


@pytest.fixture(scope="module", autouse=True)
def local_ray(ray_local):
    """Every test here reads through Ray."""


@pytest.fixture(autouse=True)
def reuse_processes(monkeypatch):
    """Tiny stretches: a fresh process per few of them would only slow the tests."""
    monkeypatch.setattr(parts, "MAX_CALLS", 0)


def read(spec: str, **args) -> parts.Parts:
    """A corpus read as training reads it: prepared, then its parts in the store."""
    return parts.load_parts(parts.prepare(spec, **args), **args)


def seed_windows(text: str, maxlen: int, step: int) -> list[str]:
    """The Keras example's loop: window and next character."""
    return [text[i:i + maxlen + 1] for i in range(0, len(text) - maxlen, step)]


def texts_of(directory) -> list[str]:
    return [(directory / n).read_bytes().decode("utf-8") for n in sorted(os.listdir(directory))]


def part_windows(refs, vocab: str, maxlen: int, step: int) -> list[str]:
    return [decode(w, vocab) for p in ray.get(refs) for w in windows(p, maxlen, step)]


def make_dir(tmp_path, sizes=(2500, 700, 3100)):
    """Files with spaces, newlines (some \\r\\n), accents and Greek capitals
    (lower-casing's final sigma), long enough to be cut into stretches."""
    rng = np.random.default_rng(1)
    alphabet = list("abcdefghij     ,.") + ["\n", "\r\n", "é", "Σ", "ΑΣ ", "X"]
    d = tmp_path / "texts"
    d.mkdir()
    for i, n in enumerate(sizes):
        (d / f"{i:02d}.txt").write_bytes("".join(rng.choice(alphabet, size=n)).encode())
    (d / "notes.md").write_text("not a corpus file")
    return d


@pytest.mark.parametrize("stretch", [10**9, 400, 97])
def test_a_directory_gives_each_files_seed_windows(tmp_path, monkeypatch, stretch):
    monkeypatch.setattr(parts, "STRETCH_BYTES", stretch)
    d = make_dir(tmp_path)
    got = read(str(d), maxlen=10, step=3, val_frac=0.2)
    texts = [normalise(t) for t in texts_of(d)[:3]]
    cuts = [holdout_start(len(t), 0.2) for t in texts]
    train = [w for t, c in zip(texts, cuts, strict=True) for w in seed_windows(t[:c], 10, 3)]
    held = [w for t, c in zip(texts, cuts, strict=True)
            for w in seed_windows(t[c:], VAL_MAXLEN, VAL_STEP)]
    assert got.vocab == "".join(sorted(set("".join(texts))))  # the direct vocabulary
    assert part_windows(got.train, got.vocab, 10, 3) == train  # no window crosses a file
    assert part_windows(got.heldout, got.vocab, VAL_MAXLEN, VAL_STEP) == held
    assert [decode(w, got.vocab) for w in ray.get(got.heldout_windows)] == held  # under the cap
    assert got.chars == sum(map(len, texts)) and got.files == 3
    assert got.info()["seed_text"] == texts[0][:10]
    assert len(got.train) >= 3 and (stretch > 5000 or len(got.train) > 3)
    seeds = got.info()["heldout_seeds"]
    assert seeds and all(len(s) == 10 and any(s in t[c:] for t, c in zip(texts, cuts, strict=True))
                         for s in seeds)


def test_the_sha256_changes_with_any_file_and_not_with_the_reading(tmp_path, monkeypatch):
    d = make_dir(tmp_path)
    monkeypatch.setattr(parts, "STRETCH_BYTES", 400)
    first = read(str(d), maxlen=10, step=3, val_frac=0.2).sha256
    assert read(str(d), maxlen=20, step=5, val_frac=0.3).sha256 == first
    info = {"source": str(d), "sha256": first}
    assert "".join(parts.recorded_texts(info)) == "".join(normalise(t) for t in texts_of(d)[:3])
    (d / "01.txt").write_text("changed " * 20)
    assert read(str(d), maxlen=10, step=3, val_frac=0.2).sha256 != first
    with pytest.raises(CharlmError, match="has changed since training"):
        list(parts.recorded_texts(info))


def test_a_big_single_file_in_stretches_is_the_small_files_reading(tmp_path, monkeypatch):
    path = make_dir(tmp_path, sizes=(6000,)) / "00.txt"
    whole = read(str(path), maxlen=40, step=3, val_frac=0.1)
    assert not parts.streamed(str(path))
    monkeypatch.setattr(parts, "STRETCH_BYTES", 500)
    assert parts.streamed(str(path))
    cut = read(str(path), maxlen=40, step=3, val_frac=0.1)
    assert len(whole.train) == 1 and len(cut.train) > 5
    assert cut.vocab == whole.vocab and cut.seed_ids == whole.seed_ids
    assert part_windows(cut.train, cut.vocab, 40, 3) == part_windows(whole.train, whole.vocab,
                                                                      40, 3)
    assert np.array_equal(ray.get(cut.heldout_windows), ray.get(whole.heldout_windows))


@pytest.mark.skipif(not os.path.exists(NIETZSCHE), reason="needs shared/data/nietzsche.txt")
def test_nietzsche_keeps_the_seed_windows_and_held_out_set(monkeypatch):
    """The windows and the held-out windows val_loss scores are today's, read
    whole or in 64 KB stretches by Ray Data."""
    corpus = load_corpus(NIETZSCHE, min_chars=41)
    train_ids, val_ids = split(corpus.ids, 0.1, 40, VAL_MAXLEN)
    expected_val = windows(val_ids, VAL_MAXLEN, VAL_STEP)
    assert len(expected_val) < parts.HELDOUT_CAP  # ~20,000: every one is scored
    for stretch in (parts.STRETCH_BYTES, 64 << 10):
        monkeypatch.setattr(parts, "STRETCH_BYTES", stretch)
        got = read(NIETZSCHE, maxlen=40, step=3, val_frac=0.1)
        assert got.vocab == corpus.vocab
        assert np.array_equal(np.concatenate([windows(p, 40, 3) for p in ray.get(got.train)]),
                              windows(train_ids, 40, 3))
        assert np.array_equal(ray.get(got.heldout_windows), expected_val)
        assert got.seed_ids == train_ids[:40].tolist()


def test_held_out_scoring_is_capped_by_an_even_deterministic_sample(tmp_path, monkeypatch):
    d = make_dir(tmp_path, sizes=(9000, 9000))
    monkeypatch.setattr(parts, "HELDOUT_CAP", 100)
    got = read(str(d), maxlen=10, step=3, val_frac=0.2)
    every = [w for p in ray.get(got.heldout) for w in windows(p, VAL_MAXLEN, VAL_STEP)]
    sample = ray.get(got.heldout_windows)
    assert len(every) > 1000 and sample.shape == (100, VAL_MAXLEN + 1)
    index = {tuple(w): i for i, w in reversed(list(enumerate(every)))}
    positions = [index[tuple(w)] for w in sample]
    assert positions == sorted(positions) and positions[0] == 0
    assert positions[-1] > 0.95 * len(every)
    again = read(str(d), maxlen=10, step=3, val_frac=0.2)
    assert np.array_equal(ray.get(again.heldout_windows), sample)


def test_byte_vocabulary_encodes_utf8_without_a_counting_vocabulary(tmp_path, monkeypatch):
    monkeypatch.setattr(parts, "STRETCH_BYTES", 300)
    d = make_dir(tmp_path)
    got = read(str(d), maxlen=10, step=3, val_frac=0.2, byte_level=True)
    assert got.vocab == BYTES_VOCAB
    data = [normalise(t).encode() for t in texts_of(d)[:3]]
    expected = [bytes(b[i:i + 11]) for b in data
                for i in range(0, holdout_start(len(b), 0.2) - 10, 3)]
    got_windows = [bytes(w) for p in ray.get(got.train) for w in windows(p, 10, 3)]
    assert got_windows == expected
    assert encode("é", BYTES_VOCAB).tolist() == [0xC3, 0xA9]
    assert decode(encode("aΣé", BYTES_VOCAB), BYTES_VOCAB) == "aΣé"


def test_a_corpus_too_short_for_windows_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(parts, "STRETCH_BYTES", 50)
    d = tmp_path / "short"
    d.mkdir()
    (d / "a.txt").write_text("tiny text " * 5)
    with pytest.raises(CharlmError, match="too short"):
        read(str(d), maxlen=40, step=3, val_frac=0.1)


def test_an_s3_prefix_reads_as_the_same_directory(tmp_path, monkeypatch, s3_server):
    s3 = s3_server
    monkeypatch.setattr(parts, "STRETCH_BYTES", 400)
    d = make_dir(tmp_path)
    for name in sorted(os.listdir(d)):
        s3.put_object(Bucket="corpus", Key=f"books/{name}", Body=(d / name).read_bytes())
    local = read(str(d), maxlen=10, step=3, val_frac=0.2)
    remote = read("s3://corpus/books", maxlen=10, step=3, val_frac=0.2)
    assert remote.vocab == local.vocab and remote.source == "s3://corpus/books"
    assert part_windows(remote.train, remote.vocab, 10, 3) == \
        part_windows(local.train, local.vocab, 10, 3)
    assert np.array_equal(ray.get(remote.heldout_windows), ray.get(local.heldout_windows))
