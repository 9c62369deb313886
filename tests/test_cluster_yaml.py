"""cluster.yaml against Ray's own autoscaler schema, plus the project's rules for it: from outside only SSH,
from the user's own network (a required value, no default); Ray never makes or edits the security group;
the dashboard on 127.0.0.1; token authentication on; least-privilege instance profiles; only the code the
nodes run is copied; the project installed on every node; GPU workers that scale; the trial slot."""

from __future__ import annotations

import copy
import re
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
        if current is None and not line.startswith(("aws ec2 ", "SG=$(aws ec2 ")):
            continue
        part = line.removesuffix("\\").strip()
        current = part if current is None else f"{current} {part}"
        if not line.endswith("\\"):
            commands.append(current)
            current = None
    return commands


def test_only_ssh_from_the_users_network_is_open_from_outside(config):
    """The declared ingress is the header's two commands: tcp 22 from SSH_CIDR (a required shell value:
    the command fails while it is unset, there is no default), and all traffic from the group itself.
    Nothing in the file opens anything to 0.0.0.0/0 (or ::/0)."""
    text = CLUSTER_YAML.read_text()
    assert "0.0.0.0" not in text and "::/0" not in text
    commands = _header_commands()
    created = [c for c in commands if c.startswith("SG=$(aws ec2 create-security-group")]
    assert len(created) == 1 and "--group-name geomix-ray" in created[0]
    rules = [c for c in commands if "authorize-security-group-ingress" in c]
    assert len(rules) == 2, rules
    ssh, inside = rules
    assert re.search(r'--protocol tcp --port 22 --cidr "\$\{SSH_CIDR:\?[^}]+\}"$', ssh), ssh
    assert '--protocol -1 --source-group "$SG"' in inside
    assert "--cidr" not in inside and "--port" not in inside
    assert all('--group-id "$SG"' in rule for rule in rules)
    assert "egress" not in " ".join(commands)  # the group keeps AWS's default egress (pip, S3)


def test_ray_never_creates_or_edits_the_security_group(config):
    """Ray 2.60 gives a group it configures its default rules, SSH from 0.0.0.0/0 among them
    (ray.autoscaler._private.aws.config._create_default_ssh_inbound_rules), and skips that only when every
    node type names its groups (SecurityGroupIds). The id is a placeholder that names no group, so `ray
    up` stops until the user's group is put in."""
    import importlib.util

    assert "security_group" not in config["provider"]
    groups = {name: t["node_config"].get("SecurityGroupIds") for name, t in _node_types(config)}
    assert set(map(tuple, groups.values())) == {("sg-REPLACE-WITH-YOUR-GROUP-ID",)}, groups
    assert not re.fullmatch(r"sg-[0-9a-f]{8,17}", groups["head_cpu"][0])  # can never be a real group id
    # why: Ray's default rule (read from its source: importing it needs boto3)
    source = Path(importlib.util.find_spec("ray.autoscaler._private.aws.config").origin).read_text()
    default_ssh = source.split("def _create_default_ssh_inbound_rules")[1].split("\ndef ")[0]
    assert '"FromPort": 22' in default_ssh and '"CidrIp": "0.0.0.0/0"' in default_ssh
    assert "if not sg.ip_permissions:" in source and "if not node_types_to_configure:" in source


def test_dashboard_on_loopback_and_token_auth_on_every_node(config):
    head = " ".join(config["head_start_ray_commands"])
    workers = " ".join(config["worker_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head and "--ray-client-server-port" not in head
    for commands in (head, workers):
        starts = [c for c in commands.split(";") if "ray start" in c]
        assert starts and all("RAY_AUTH_MODE=token ray start" in c for c in starts)
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    assert "chmod 600 ~/.ray/auth_token" in config["setup_commands"]


def test_nodes_have_least_privilege_instance_profiles(config):
    """Not Ray's default profile (made when the head names none): the head and the workers each name their
    own, whose policies (docs/cluster-security.md) hold the results bucket only, plus, for the head, the
    EC2 calls the autoscaler makes."""
    profiles = {name: t["node_config"].get("IamInstanceProfile") for name, t in _node_types(config)}
    assert profiles == {"head_cpu": {"Name": "geomix-ray-head"}, "gpu_1x": {"Name": "geomix-ray-worker"},
                        "gpu_4x": {"Name": "geomix-ray-worker"}}
    doc = (CLUSTER_YAML.parent / "docs" / "cluster-security.md").read_text()
    import json

    policies = {m.group(1): json.loads(m.group(2)) for m in
                re.finditer(r"`(geomix-ray-\w+)` policy:\n\n```json\n(.*?)```", doc, re.S)}
    assert set(policies) == {"geomix-ray-head", "geomix-ray-worker"}
    for name, policy in policies.items():
        s3 = [st for st in policy["Statement"] if any(a.startswith("s3:") for a in _actions(st))]
        assert s3 and all(r.startswith("arn:aws:s3:::YOUR-BUCKET") for st in s3 for r in _resources(st))
        actions = [a for st in policy["Statement"] for a in _actions(st)]
        assert not any(a == "*" or a.endswith(":*") for a in actions)
        passed = [st for st in policy["Statement"] if "iam:PassRole" in _actions(st)]
        if name == "geomix-ray-worker":
            assert not passed and all(a.startswith("s3:") for a in actions)
        else:  # the head may hand only the worker role to the workers it launches
            roles = [r for st in passed for r in _resources(st)]
            assert roles == ["arn:aws:iam::ACCOUNT-ID:role/geomix-ray-worker"]
            # every EC2 action that changes something is bound to the region or to this cluster's tag
            changes = [st for st in policy["Statement"] if any(
                a.startswith("ec2:") and not a.startswith("ec2:Describe") for a in _actions(st))]
            assert changes and all(st.get("Condition") for st in changes)


def _node_types(config: dict):
    return config["available_node_types"].items()


def _actions(statement: dict) -> list[str]:
    action = statement["Action"]
    return [action] if isinstance(action, str) else list(action)


def _resources(statement: dict) -> list[str]:
    resource = statement["Resource"]
    return [resource] if isinstance(resource, str) else list(resource)


def test_nodes_install_the_project_and_gpu_workers_scale(config):
    setup = " ".join(config["setup_commands"])
    assert 'pip install -q -e ".[sweep,analysis]"' in setup and "ray[default,tune,train]==2.60.0" in setup
    # only what the install and the sweeps need: untracked files of the checkout stay on the laptop
    code = {"pyproject.toml", "README.md", "geomix", "store", "sweeps", "analysis"}
    mounts = {k: v for k, v in config["file_mounts"].items() if k.startswith("~/geomix")}
    assert mounts == {f"~/geomix/{name}": f"./{name}" for name in code}
    assert set(config["file_mounts"]) - set(mounts) == {"~/.ray/auth_token"}
    for name in code:
        assert (CLUSTER_YAML.parent / name).exists()
    head = config["available_node_types"][config["head_node_type"]]
    assert head["resources"][session.TRIAL_SLOT] >= 1  # Ray Train trial actors take no CPU
    gpu_types = {n: t for n, t in config["available_node_types"].items() if n.startswith("gpu")}
    assert gpu_types and all(0 <= t["min_workers"] < t["max_workers"] for t in gpu_types.values())
