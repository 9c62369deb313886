"""cluster.yaml against Ray's own autoscaler schema, plus the project's rules for it (no public dashboard,
GCS or client port; the project installed on every node; GPU workers that scale; the trial slot)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

pytest.importorskip("ray")
pytest.importorskip("jsonschema")

from sweeps import session  # noqa: E402

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


def _header_commands() -> list[str]:
    """The ``aws ec2 ...`` commands in the file's header comment, continuation lines joined."""
    header = CLUSTER_YAML.read_text().split("cluster_name:")[0]
    commands, current = [], None
    for line in (raw.lstrip("#").strip() for raw in header.splitlines()):
        if current is None and not line.startswith("aws ec2 "):
            continue
        part = line.removesuffix("\\").strip()
        current = part.removeprefix("aws ec2 ") if current is None else f"{current} {part}"
        if not line.endswith("\\"):
            commands.append(current)
            current = None
    return commands


def test_only_ssh_is_exposed(config):
    commands = " ".join(config["head_start_ray_commands"] + config["worker_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in commands and "0.0.0.0" not in commands
    assert "--ray-client-server-port" not in commands
    # The file names an existing group and defines no rules of its own: Ray then uses the group as it is
    # (it adds its default rule, SSH from anywhere, only to a group it creates or one without rules).
    assert config["provider"]["security_group"] == {"GroupName": "geomix-ray"}
    # The group's rules are the header's commands: SSH from one CIDR, and all traffic inside the group.
    rules = [c for c in _header_commands() if c.startswith("authorize-security-group-ingress")]
    assert len(rules) == 2, rules
    ssh, inside = rules
    assert "--protocol tcp --port 22 --cidr 203.0.113.0/24" in ssh and "0.0.0.0" not in ssh
    assert "--protocol -1 --source-group geomix-ray" in inside and "--cidr" not in inside
    created = [c for c in _header_commands() if c.startswith("create-security-group")]
    assert len(created) == 1 and "--group-name geomix-ray" in created[0]


def test_nodes_install_the_project_and_gpu_workers_scale(config):
    setup = " ".join(config["setup_commands"])
    assert 'pip install -q -e ".[sweep,analysis]"' in setup and "ray[default,tune,train]==2.60.0" in setup
    assert config["file_mounts"] == {"~/geomix": "."}
    head = config["available_node_types"][config["head_node_type"]]
    assert head["resources"][session.TRIAL_SLOT] >= 1  # Ray Train trial actors take no CPU
    gpu_types = {n: t for n, t in config["available_node_types"].items() if n.startswith("gpu")}
    assert gpu_types and all(0 <= t["min_workers"] < t["max_workers"] for t in gpu_types.values())
