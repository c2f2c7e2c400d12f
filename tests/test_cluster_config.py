"""cluster.yaml, checked offline the way `ray up` checks it before touching AWS,
plus what Ray cannot know: that the node types can host a GPU training run,
that the images match pyproject's pins and that no control port faces the
internet."""

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
# Ray's dashboard/jobs API, GCS and client server: reached only through
# `ray dashboard cluster.yaml`, an SSH tunnel.
CONTROL_PORTS = (8265, 6379, 10001)
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


def test_head_runs_no_training(raw: dict) -> None:
    head = raw["available_node_types"][raw["head_node_type"]]
    assert head["resources"].get("CPU") == 0
    assert not head["resources"].get("GPU")


@pytest.mark.parametrize("num_workers", [1, 4, 8])
def test_gpu_types_can_host_training(raw: dict, num_workers: int) -> None:
    """--num-workers N --use-gpu: one GPU per worker, CPUs to spare beside each."""
    assert max_gpus(raw) >= num_workers
    for name, t in worker_types(raw).items():
        gpus, cpus = t["resources"].get("GPU", 0), t["resources"].get("CPU", 0)
        assert gpus >= 1, name
        assert cpus > gpus * CPUS_PER_TRAIN_WORKER, name
        assert t.get("min_workers", 0) <= t["max_workers"], name


def test_nodes_scale_down_when_idle(raw: dict) -> None:
    assert raw["idle_timeout_minutes"] > 0
    assert all(t.get("min_workers", 0) == 0 for t in worker_types(raw).values())


def test_no_ingress_for_control_ports(raw: dict) -> None:
    """No rule opens a Ray port, or every port, to the world."""
    rules = raw["provider"].get("security_group", {}).get("IpPermissions", [])
    for rule in rules:
        low, high = rule.get("FromPort", -1), rule.get("ToPort", -1)
        for port in CONTROL_PORTS:
            assert not (low == -1 or low <= port <= high), rule
        ranges = [r.get("CidrIp") for r in rule.get("IpRanges", [])]
        ranges += [r.get("CidrIpv6") for r in rule.get("Ipv6Ranges", [])]
        assert not {"0.0.0.0/0", "::/0"} & set(ranges), rule
    for t in raw["available_node_types"].values():
        assert "SecurityGroupIds" not in t["node_config"], "use the launcher's group"


# Ray's published image tags: rayproject/ray:<version>-py<3 and minor>, then
# -gpu (or a -cuXY build) for GPU nodes, or nothing for CPU ones.
IMAGE_TAG = re.compile(r"rayproject/ray:(\d+\.\d+\.\d+)-py3(\d+)(-gpu|-cu\d+)?")
# The Pythons Ray publishes images for at 2.60.
RAY_IMAGE_PYTHONS = (10, 11, 12, 13)


def test_images_follow_rays_tag_scheme_for_the_pins(raw: dict, pyproject: str) -> None:
    """The driver runs in the head's image, training in the workers': both must
    be a tag Ray publishes, of the Ray that pyproject pins, on one Python that
    pyproject allows; the workers' the GPU build."""
    ray_pin = pin(pyproject, "ray")
    low, high = map(int, re.search(r'requires-python = ">=3\.(\d+),<3\.(\d+)"',
                                   pyproject).groups())
    tags = {key: IMAGE_TAG.fullmatch(raw["docker"][key]) for key in ("head_image", "worker_image")}
    for key, tag in tags.items():
        assert tag, f"{key} {raw['docker'][key]} is not a Ray image tag"
        version, minor, build = tag.groups()
        assert version == ray_pin, key
        assert low <= int(minor) < high and int(minor) in RAY_IMAGE_PYTHONS, key
    assert tags["head_image"].group(2) == tags["worker_image"].group(2), "one Python"
    assert tags["head_image"].group(3) is None and tags["worker_image"].group(3), "GPU workers"


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


def test_stopped_nodes_are_terminated(raw: dict) -> None:
    """A stopped node keeps its EBS volumes billed."""
    assert raw["provider"].get("cache_stopped_nodes") is False


def test_ray_token_auth_on_every_node(raw: dict) -> None:
    assert "-e RAY_AUTH_MODE=token" in raw["docker"]["run_options"]
    assert raw["file_mounts"].get("~/.ray/auth_token") == "~/.ray/auth_token"


def test_ssh_group_is_the_users_own(raw: dict) -> None:
    """A named, pre-made group (SSH from the user's range, docs/cluster.md): one
    that `ray up` makes itself admits SSH from anywhere."""
    assert raw["provider"]["security_group"]["GroupName"]


def test_project_synced_and_installed(raw: dict, prepared: dict) -> None:
    remote, local = next(iter(raw["file_mounts"].items()))
    assert os.path.isfile(os.path.join(ROOT, local, "pyproject.toml"))
    workers = " ".join(prepared["worker_setup_commands"])
    head = " ".join(prepared["head_setup_commands"])
    project = remote.replace("~", "$HOME")
    assert f"pip install -e \"{project}[gpu]\"" in workers
    assert "pip install -e" in head and "[gpu]" not in head
    assert "TF_USE_LEGACY_KERAS" not in json.dumps(raw), "charlm sets it itself"
