"""A checkpoint as generation reads it: its charlm.json checked in the driver
(no TensorFlow), its weights loaded where the text is generated."""

from __future__ import annotations

import os
import shutil
from typing import TYPE_CHECKING

from charlm import storage
from charlm.config import TrainConfig
from charlm.errors import CharlmError, first_line
from charlm.model import checkpoint

if TYPE_CHECKING:
    from charlm.model.generator import Weights


def _unloadable(uri: str, why: str) -> CharlmError:
    return CharlmError(f"checkpoint {uri} cannot be loaded ({why}); "
                       "pass a checkpoint written by jobs.train")


def checked_meta(uri: str) -> dict:
    """A checkpoint's charlm.json, with what every generation reads from it
    present: the training config and the vocabulary."""
    return _checked(checkpoint.read_meta(uri), uri)


def _checked(meta: dict, uri: str) -> dict:
    try:
        TrainConfig.from_dict(meta["config"])
        if not isinstance(meta["vocab"], str) or not meta["vocab"]:
            raise ValueError("no vocabulary")
    except Exception as e:  # missing keys and wrong types raise many types
        raise _unloadable(uri, first_line(e)) from e
    return meta


def load_weights(uri: str) -> tuple[Weights, dict]:
    """(charlm.model.generator.Weights, checked charlm.json) of a checkpoint,
    local or remote, read without building a Keras model. A remote one is
    downloaded to a temporary directory, removed once read."""
    from charlm.model.generator import weights_from_checkpoint

    local = checkpoint.fetch(uri)
    try:
        meta = _checked(checkpoint.read_meta(local), uri)
        config = TrainConfig.from_dict(meta["config"])
        weights = weights_from_checkpoint(os.path.join(local, checkpoint.STATE), config,
                                          len(meta["vocab"]))
    except CharlmError:
        raise
    except Exception as e:  # TensorFlow raises many types for a bad checkpoint
        raise _unloadable(uri, first_line(e)) from e
    finally:
        if storage.is_uri(uri):
            shutil.rmtree(local, ignore_errors=True)
    return weights, meta
