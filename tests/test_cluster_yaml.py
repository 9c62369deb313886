"""cluster.yaml against Ray's own autoscaler schema, plus the project's rules for it (no public dashboard,
GCS or client port; the project installed on every node; GPU workers that scale; the trial slot)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

pytest.importorskip("ray")
pytest.importorskip("jsonschema")

from sweeps import _tune  # noqa: E402

CLUSTER_YAML = Path(__file__).resolve().parent.parent / "cluster.yaml"


def validate_cluster_config(config: dict) -> dict:
    """Fill Ray's defaults and validate against its schema, as `ray up` does before launching anything.

    Private API (``ray.autoscaler._private.util``), pinned to Ray 2.60.0: the one place to change when it
    moves.
    """
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


@pytest.fixture(scope="module")
def config() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def test_cluster_yaml_passes_rays_schema(config):
    prepared = validate_cluster_config(config)
    assert prepared["provider"]["type"] == "aws"
    assert prepared["head_node_type"] == "head_cpu"


def test_validator_rejects_a_broken_config(config):
    broken = copy.deepcopy(config)
    broken["available_node_types"]["gpu_1x"]["min_workers"] = "zero"
    with pytest.raises(Exception, match="zero"):
        validate_cluster_config(broken)
    broken = copy.deepcopy(config)
    broken["head_node_type"] = "missing"
    with pytest.raises(ValueError, match="head_node_type"):
        validate_cluster_config(broken)


def test_only_ssh_is_exposed(config):
    commands = " ".join(config["head_start_ray_commands"] + config["worker_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in commands and "0.0.0.0" not in commands
    assert "--ray-client-server-port" not in commands
    # Ray only adds its default rules (SSH from anywhere) to a group without rules; ours exists with rules
    # (the commands are in the file's header) and the file itself opens nothing else.
    group = config["provider"]["security_group"]
    assert group["GroupName"] and all(
        p["FromPort"] == p["ToPort"] == 22 for p in group.get("IpPermissions", [])
    )
    header = CLUSTER_YAML.read_text().split("cluster_name:")[0]
    assert "--port 22 --cidr" in header and "authorize-security-group-ingress" in header


def test_nodes_install_the_project_and_gpu_workers_scale(config):
    setup = " ".join(config["setup_commands"])
    assert 'pip install -q -e ".[sweep,analysis]"' in setup and "ray[default,tune,train]==2.60.0" in setup
    assert config["file_mounts"] == {"~/geomix": "."}
    head = config["available_node_types"][config["head_node_type"]]
    assert head["resources"][_tune.TRIAL_SLOT] >= 1  # Ray Train trial actors take no CPU
    gpu_types = {n: t for n, t in config["available_node_types"].items() if n.startswith("gpu")}
    assert gpu_types and all(0 <= t["min_workers"] < t["max_workers"] for t in gpu_types.values())
