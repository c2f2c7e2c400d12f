"""cluster.yaml and ./Dockerfile, checked offline the way `ray up` checks the
config before touching AWS, plus what Ray cannot know: that the node types can
host a GPU training run, that every node is in the user's own security group,
and that the images match pyproject's pins, with a CUDA TensorFlow can use."""

from __future__ import annotations

import copy
import json
import os
import re

import jsonschema
import pytest
import ray.autoscaler
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# One CPU per training worker; the rest run Ray Data's tasks beside them.
CPUS_PER_TRAIN_WORKER = 1


@pytest.fixture(scope="module")
def raw() -> dict:
    with open(os.path.join(ROOT, "cluster.yaml"), encoding="utf-8") as f:
        return yaml.safe_load(f)


@pytest.fixture(scope="module")
def prepared(raw: dict) -> dict:
    """Defaults merged in and setup commands combined, as `ray up` does first."""
    return prepare_config(copy.deepcopy(raw))


@pytest.fixture(scope="module")
def pyproject() -> str:
    with open(os.path.join(ROOT, "pyproject.toml"), encoding="utf-8") as f:
        return f.read()


def pin(pyproject: str, package: str) -> str:
    """The version pinned for `package` (extras allowed) in pyproject's dependencies."""
    return re.search(rf'"{re.escape(package)}(\[[^\]]*\])?==([\w.]+)"', pyproject).group(2)


def worker_types(config: dict) -> dict[str, dict]:
    return {name: t for name, t in config["available_node_types"].items()
            if name != config["head_node_type"]}


def max_gpus(config: dict) -> int:
    """GPUs the autoscaler can reach within the global max_workers, biggest nodes first."""
    budget, total = config["max_workers"], 0
    for t in sorted(worker_types(config).values(), key=lambda t: -t["resources"].get("GPU", 0)):
        nodes = min(t.get("max_workers", budget), budget)
        total += nodes * t["resources"].get("GPU", 0)
        budget -= nodes
    return total


def test_raw_config_matches_ray_schema(raw: dict) -> None:
    schema = os.path.join(os.path.dirname(ray.autoscaler.__file__), "ray-schema.json")
    with open(schema, encoding="utf-8") as f:
        jsonschema.validate(raw, json.load(f))


def test_prepared_config_passes_ray_validation(prepared: dict) -> None:
    validate_config(prepared)


@pytest.mark.parametrize("num_workers", [1, 4, 8])
def test_gpu_types_can_host_training(raw: dict, num_workers: int) -> None:
    """--num-workers N --use-gpu: one GPU per worker, CPUs to spare beside each."""
    assert max_gpus(raw) >= num_workers
    for name, t in worker_types(raw).items():
        gpus, cpus = t["resources"].get("GPU", 0), t["resources"].get("CPU", 0)
        assert gpus >= 1, name
        assert cpus > gpus * CPUS_PER_TRAIN_WORKER, name
        assert t.get("min_workers", 0) <= t["max_workers"], name


def test_every_node_type_names_one_security_group(raw: dict) -> None:
    """By id, in every node_config: Ray then looks up no group by name in the
    first VPC it finds (creating one open to SSH from anywhere when the name
    is absent there), and picks subnets in the group's own VPC."""
    groups = {name: t["node_config"].get("SecurityGroupIds") or t["node_config"].get("SubnetIds")
              for name, t in raw["available_node_types"].items()}
    assert all(groups.values()), f"a node type without SecurityGroupIds: {groups}"
    assert len({tuple(g) for g in groups.values()}) == 1, f"one group for all: {groups}"
    for group in next(iter(groups.values())):
        assert re.fullmatch(r"sg-([0-9a-f]{8}|[0-9a-f]{17}|CHANGE-ME)", group), group
    assert "security_group" not in raw["provider"], "the group is the one made by hand"


# Ray's published image tags: rayproject/ray:<version>-py<3 and minor>, then
# the platform: -cpu or none (CPU), -cuXYZ (that CUDA), -gpu (an alias).
IMAGE_TAG = re.compile(r"rayproject/ray:(\d+\.\d+\.\d+)-py3(\d+)(?:-(cpu|gpu|cu\d+))?")
# The Pythons Ray publishes images for at 2.60.
RAY_IMAGE_PYTHONS = (10, 11, 12, 13)
# (CUDA, cuDNN major) of each platform of Ray's images (Ray's CI:
# ci/ray_ci/docker_container.py PLATFORMS_RAY; -gpu is GPU_PLATFORM).
RAY_IMAGE_CUDA = {"cpu": None, None: None, "gpu": ("12.1", 8), "cu121": ("12.1", 8),
                  "cu123": ("12.3", 9), "cu124": ("12.4", 9), "cu125": ("12.5", 9),
                  "cu126": ("12.6", 9), "cu128": ("12.8", 9)}
# (CUDA, cuDNN) that each pinned TensorFlow is built for and needs at least.
TENSORFLOW_CUDA = {"2.21.0": ("12.5", "9.3")}


def as_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(x) for x in version.split("."))


def images(raw: dict) -> dict[str, str]:
    """Every image cluster.yaml runs, by its key, and ./Dockerfile's base."""
    found = {k: raw["docker"][k] for k in ("image", "head_image", "worker_image")
             if raw["docker"].get(k)}
    with open(os.path.join(ROOT, "Dockerfile"), encoding="utf-8") as f:
        found["Dockerfile"] = re.search(r"^FROM (\S+)", f.read(), flags=re.MULTILINE).group(1)
    return found


def test_tensorflows_cuda_table_matches_the_pinned_wheel(pyproject: str) -> None:
    """The table below is TensorFlow's own word: its build info and the cuDNN
    its CUDA extra requires (the wheels of charlm's gpu extra)."""
    import importlib.metadata

    import tensorflow as tf

    cuda, cudnn = TENSORFLOW_CUDA[pin(pyproject, "tensorflow")]
    assert tf.sysconfig.get_build_info()["cuda_version"].startswith(f"{cuda}.")
    wanted = next(r for r in importlib.metadata.requires("tensorflow")
                  if r.startswith("nvidia-cudnn-cu12") and "and-cuda" in r)
    assert as_tuple(re.search(r">=([\d.]+)", wanted).group(1))[:2] >= as_tuple(cudnn), wanted


def test_images_are_rays_for_the_pins_with_cuda_that_tensorflow_can_use(
        raw: dict, prepared: dict, pyproject: str) -> None:
    """Every image is a Ray tag of the pinned Ray, on one Python pyproject
    allows, or the charlm image (./Dockerfile, whose base is checked). An
    image's own CUDA is at least TensorFlow's, with its cuDNN major; an image
    without CUDA takes TensorFlow's own from the gpu extra on the workers, and
    the driver from the host (`--gpus all`)."""
    ray_pin, tf_pin = pin(pyproject, "ray"), pin(pyproject, "tensorflow")
    low, high = map(int, re.search(r'requires-python = ">=3\.(\d+),<3\.(\d+)"',
                                   pyproject).groups())
    cuda, cudnn = TENSORFLOW_CUDA[tf_pin]
    workers = " ".join(prepared["worker_setup_commands"])
    pythons = set()
    for key, image in images(raw).items():
        tag = IMAGE_TAG.fullmatch(image)
        if tag is None and key != "Dockerfile":
            continue  # the charlm image, built from ./Dockerfile
        assert tag, f"{key} {image} is not a Ray image tag"
        version, minor, platform = tag.groups()
        assert version == ray_pin, (key, image)
        assert low <= int(minor) < high and int(minor) in RAY_IMAGE_PYTHONS, (key, image)
        pythons.add(minor)
        assert platform in RAY_IMAGE_CUDA, f"{image}: add its CUDA to RAY_IMAGE_CUDA"
        stack = RAY_IMAGE_CUDA[platform]
        if stack is None:
            assert '[gpu]"' in workers, "no CUDA in the image: the workers need the gpu extra"
            options = raw["docker"].get("run_options", []) + \
                raw["docker"].get("worker_run_options", [])
            assert "--gpus all" in options, "no CUDA in the image: the driver from the host"
        else:
            assert as_tuple(stack[0]) >= as_tuple(cuda), f"{image}: CUDA {stack[0]} < {cuda}"
            assert stack[1] == as_tuple(cudnn)[0], f"{image}: cuDNN {stack[1]}, needs {cudnn}"
    assert len(pythons) == 1, "one Python on every node"


def test_the_charlm_image_installs_the_gpu_extra_where_cluster_yaml_mounts_it(
        raw: dict) -> None:
    """The image's editable install sits where file_mounts puts the checkout,
    so the code that runs is the synced one."""
    with open(os.path.join(ROOT, "Dockerfile"), encoding="utf-8") as f:
        dockerfile = f.read()
    remote = next(iter(raw["file_mounts"])).replace("~", "/home/ray")
    assert re.search(rf"^WORKDIR {re.escape(remote)}$", dockerfile, flags=re.MULTILINE)
    assert 'pip install --no-cache-dir -e ".[gpu]"' in dockerfile


def test_gpu_extra_pins_tensorflow_with_cuda(pyproject: str) -> None:
    """GPU workers install `charlm[gpu]`: TensorFlow's CUDA build, at the CPU pin."""
    extra = re.search(r"^gpu = \[(.*)\]$", pyproject, flags=re.MULTILINE).group(1)
    assert f'"tensorflow[and-cuda]=={pin(pyproject, "tensorflow")}"' in extra


def test_every_worker_type_has_an_instance_profile(raw: dict) -> None:
    """Without one, workers cannot write the bucket: training fails at its first checkpoint."""
    for name, t in worker_types(raw).items():
        profile = t["node_config"].get("IamInstanceProfile", {})
        assert profile.get("Name") or profile.get("Arn"), name


def test_images_are_real_amis(raw: dict) -> None:
    """An AMI id, or AWS's public SSM parameter for one (resolved at launch)."""
    for name, t in raw["available_node_types"].items():
        image = t["node_config"]["ImageId"]
        assert re.fullmatch(r"ami-[0-9a-f]{8}([0-9a-f]{9})?", image) or re.fullmatch(
            r"resolve:ssm:/aws/service/[\w./-]+", image), (name, image)


def test_ray_token_auth_on_every_node(raw: dict) -> None:
    """The head's and every worker's Ray ask for the token that `ray job
    submit` brings, from the file every node gets."""
    docker = raw["docker"]
    for role in ("head", "worker"):
        options = docker.get("run_options", []) + docker.get(f"{role}_run_options", [])
        assert "-e RAY_AUTH_MODE=token" in options, role
    assert raw["file_mounts"].get("~/.ray/auth_token") == "~/.ray/auth_token"


def test_project_synced_and_installed(raw: dict, prepared: dict) -> None:
    remote, local = next(iter(raw["file_mounts"].items()))
    assert os.path.isfile(os.path.join(ROOT, local, "pyproject.toml"))
    workers = " ".join(prepared["worker_setup_commands"])
    head = " ".join(prepared["head_setup_commands"])
    project = remote.replace("~", "$HOME")
    assert f"pip install -e \"{project}[gpu]\"" in workers
    assert "pip install -e" in head and "[gpu]" not in head
    assert "TF_USE_LEGACY_KERAS" not in json.dumps(raw), "charlm sets it itself"
