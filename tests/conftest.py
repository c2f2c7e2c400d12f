"""charlm is installed editable by `make install`. Importing it first selects
tf-keras before any test module imports TensorFlow. Fixtures that several
test modules share live here."""

import pytest

import charlm  # noqa: F401


@pytest.fixture(scope="module")
def ray_local():
    """An embedded Ray for the module, as the jobs start it."""
    import ray

    from charlm import runtime

    runtime.init_ray(cpus_needed=2)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> str:
    """A 20K-character corpus of a few words: jobs on it are tiny."""
    words = ("the quick brown fox jumps over the lazy dog while a wizard quietly "
             "boxes seven jugs of plum jam ").split()
    text = " ".join(words[(i * 7) % len(words)] for i in range(4000))
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text(text)
    return str(path)
