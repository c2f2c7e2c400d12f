"""charlm is installed editable by `make install`. Importing it first selects
tf-keras before any test module imports TensorFlow. Fixtures that several
test modules share live here."""

import os

import pytest
from raycluster import SESSION

import charlm  # noqa: F401

# Ray Train's controller polls its workers every 2 s (Ray 2.60's
# RAY_TRAIN_HEALTH_CHECK_INTERVAL_S, read from the driver's environment): each
# tiny test run's start and end would wait for a poll. A test-only setting.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
for key, value in SESSION.items():  # Ray's settings for test sessions
    os.environ.setdefault(key, value)


def uses(item: pytest.Item, fixture: str) -> bool:
    return fixture in getattr(item, "fixturenames", ())


# The groups that take longest (`--durations`), longest first. xdist hands out
# groups in collection order as its workers free up: these start early, and
# the short ones even out the end. Only the balance depends on this list.
LONGEST = ("test_training", "word_run", "test_submit", "test_training_features",
           "test_checkpoint")


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Under pytest-xdist (--dist loadgroup) the tests on the multi-node
    cluster run in one worker, the modules that read `word_run` in one, and
    every other module whole in one: each session or module fixture is then
    built once. Run serially, the multi-node tests come last (the cluster's
    four nodes' daemons, busy even when idle, then live only while they run);
    under xdist, first (the longest group starts at once), then LONGEST."""
    readers = {item.module.__name__ for item in items if uses(item, "word_run")}
    groups = {}
    for item in items:
        module = item.module.__name__
        groups[item] = ("multinode" if uses(item, "multinode")
                        else "word_run" if module in readers else module)
        item.add_marker(pytest.mark.xdist_group(groups[item]))
    parallel = "PYTEST_XDIST_WORKER" in os.environ
    rank = {group: i for i, group in enumerate(LONGEST)}
    items.sort(key=lambda item: ((groups[item] == "multinode") != parallel,
                                 rank.get(groups[item], len(LONGEST))))


@pytest.fixture(scope="session")
def ray_local(s3_env):
    """One embedded Ray for the whole session, as the jobs start it; this
    process and Ray's workers reach the session's S3 server."""
    import ray
    from raycluster import environ

    from charlm import runtime

    with environ(s3_env):
        runtime.init_ray(cpus_needed=2)
        yield
        ray.shutdown()


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> str:
    """A 20K-character corpus of a few words: jobs on it are tiny."""
    words = ("the quick brown fox jumps over the lazy dog while a wizard quietly "
             "boxes seven jugs of plum jam ").split()
    text = " ".join(words[(i * 7) % len(words)] for i in range(4000))
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text(text)
    return str(path)


@pytest.fixture(scope="session")
def s3_env():
    """moto's S3 server with raycluster.BUCKET, for the whole session; yields
    the environment that reaches it (not applied to this process: a module
    that reads s3:// itself applies it, raycluster.environ)."""
    from raycluster import BUCKET, s3_server

    with s3_server(BUCKET) as env:
        yield env


@pytest.fixture(scope="session")
def multinode(s3_env):
    """The one multi-node cluster of the session, shaped like cluster.yaml's: a
    head with 0 CPUs, two CPU nodes and one that advertises a GPU TensorFlow
    cannot see (`ray start --num-gpus 1`), 2 CPUs each; S3 the only storage,
    its credentials on every node as an instance profile's would be. Tests
    that kill a node replace it (raycluster.replace_node)."""
    from raycluster import ray_cluster

    with ray_cluster(head_cpus=0, workers=[(2, 0)] * 2 + [(2, 1)], env=s3_env) as cluster:
        yield cluster


@pytest.fixture(scope="session")
def word_run(ray_local, corpus: str, tmp_path_factory) -> str:
    """Two epochs of a small model on `corpus`, trained by charlm in-process:
    the run directory that generation and evaluation read."""
    from charlm.config import make_config
    from charlm.training.trainer import train

    storage = str(tmp_path_factory.mktemp("word_run"))
    train(make_config(None, corpus=corpus, storage_path=storage, name="words", units=32,
                      maxlen=32, step=32, batch_size=32, objective="all", learning_rate=0.02,
                      clipnorm=1.0, epochs=2))
    return os.path.join(storage, "words")
