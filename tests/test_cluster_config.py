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
    rules = raw["provider"].get("security_group", {}).get("IpPermissions", [])
    for rule in rules:
        low, high = rule.get("FromPort", -1), rule.get("ToPort", -1)
        for port in CONTROL_PORTS:
            assert not (low == -1 or low <= port <= high), rule
    for t in raw["available_node_types"].values():
        assert "SecurityGroupIds" not in t["node_config"], "use the launcher's group"


def test_images_match_pyproject_pins(raw: dict, pyproject: str) -> None:
    """The driver runs in the head's image, training in the workers': both must
    carry the Ray that pyproject pins, on a Python that pyproject allows."""
    ray_pin = re.search(r'"ray\[[^\]]*\]==([\w.]+)"', pyproject).group(1)
    low, high = map(int, re.search(r'requires-python = ">=3\.(\d+),<3\.(\d+)"',
                                   pyproject).groups())
    assert low <= 11 < high
    for key in ("head_image", "worker_image"):
        assert raw["docker"][key].startswith(f"rayproject/ray:{ray_pin}-py311"), key
    assert raw["docker"]["worker_image"].endswith("-gpu")


def test_project_synced_and_installed(raw: dict, prepared: dict) -> None:
    (remote, local), = raw["file_mounts"].items()
    assert os.path.isfile(os.path.join(ROOT, local, "pyproject.toml"))
    workers = " ".join(prepared["worker_setup_commands"])
    head = " ".join(prepared["head_setup_commands"])
    project = remote.replace("~", "$HOME")
    assert f"pip install -e \"{project}[gpu]\"" in workers
    assert "pip install -e" in head and "[gpu]" not in head
    assert "TF_USE_LEGACY_KERAS" not in json.dumps(raw), "charlm sets it itself"
