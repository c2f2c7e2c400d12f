"""Byte ids as text (--vocab bytes): UTF-8, an invalid sequence as U+FFFD, a
character cut off at the end dropped; the same in Python (the job's rows),
one id at a time (the quick sampler) and in the exported graph."""

from __future__ import annotations

import numpy as np
import pytest

from charlm.data.corpus import BYTES_VOCAB, decode, decode_stream, encode, partial_tail


def utf8(text: str) -> list[int]:
    return list(text.encode("utf-8"))


@pytest.mark.parametrize("ids, text", [
    (utf8("café"), "café"),
    (utf8("café")[:-1], "caf"),  # "é" cut after its lead byte
    (utf8("東京")[:-1], "東"),  # cut after two of three bytes
    (utf8("a😀")[:-1], "a"),  # cut after three of four
    (utf8("東") + [0x41], "東A"),
    ([0x61, 0xFF, 0x62], "a\ufffdb"),  # never UTF-8
    ([0x61, 0xA9], "a\ufffd"),  # a continuation byte with no lead
    ([0x61, 0xE6, 0x41], "a\ufffdA"),  # a lead whose character never comes
    ([0x61, 0xED, 0xA0], "a\ufffd\ufffd"),  # a surrogate's start: never a character
    ([0x61, 0xC0], "a\ufffd"),  # an overlong form's lead: never a character
    ([], ""),
])
def test_bytes_decode_as_utf8_cut_at_the_last_whole_character(ids, text):
    assert decode(ids, BYTES_VOCAB) == text
    assert "".join(decode_stream(iter(ids), BYTES_VOCAB)) == text


def test_a_streamed_character_comes_with_its_last_byte():
    pieces = decode_stream(iter(utf8("é東")), BYTES_VOCAB)
    assert next(pieces) == "é" and next(pieces) == "東"


def random_rows(n: int, seed: int = 0) -> list[list[int]]:
    """Short rows, mostly of bytes that matter to UTF-8: leads of every length
    and their edge cases, continuations at the edges of their ranges, ASCII."""
    rng = np.random.default_rng(seed)
    special = [0x00, 0x41, 0x80, 0x8F, 0x90, 0x9F, 0xA0, 0xBF, 0xC0, 0xC1, 0xC2, 0xDF, 0xE0,
               0xED, 0xEF, 0xF0, 0xF4, 0xF5, 0xFF]
    return [[int(b) if rng.random() < 0.2 else int(rng.choice(special))
             for b in rng.integers(0, 256, rng.integers(0, 8))] for _ in range(n)]


def test_partial_tail_is_what_a_strict_decoder_leaves_unread():
    """A tail is partial exactly when more bytes could still make it a
    character: strictly decoded, it fails only for lack of data."""
    for row in random_rows(3000, seed=1):
        data = bytes(row)
        k = partial_tail(data)
        for cut in range(1, 4):
            tail = data[len(data) - cut:] if cut <= len(data) else None
            if tail is None:
                continue
            try:
                tail.decode("utf-8")
                incomplete = False
            except UnicodeDecodeError as e:
                incomplete = e.reason == "unexpected end of data" and e.start == 0
            assert incomplete == (cut == k), (data, k, cut)


def test_stream_and_graph_decode_as_python_does():
    import tensorflow as tf

    from charlm.generation.export import graph_texts

    rows = random_rows(3000) + [utf8("aΣé東京😀")]
    want = [decode(row, BYTES_VOCAB) for row in rows]
    assert ["".join(decode_stream(iter(row), BYTES_VOCAB)) for row in rows] == want
    got = graph_texts(tf.ragged.constant(rows, dtype=tf.int32, ragged_rank=1), BYTES_VOCAB)
    assert [t.decode("utf-8") for t in got.numpy()] == want
    assert want[-1] == "aΣé東京😀" == decode(encode(want[-1], BYTES_VOCAB), BYTES_VOCAB)
