"""The shipped deployment files (deploy/), each checked by the tool that reads it, and fitted together."""

from __future__ import annotations

import copy
import ipaddress
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

import resolver
from resolver import yamlfile
from resolver.control import config
from resolver.filtering import lists, policyfile

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
BIN = Path(sys.executable).parent  # the test venv: `schooldns` and `hadolint` (the test extra) are here
IMAGE = f"schooldns:{resolver.__version__}"


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=60, env=env)


def tool(name: str) -> str:
    """A Debian tool the Makefile's test-tools installs; /usr/sbin may be off a user's PATH."""
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    assert found, f"{name} is missing: `make test-tools` installs it"
    return found


def load_config(text: str, where: str) -> config.Config:
    """A config file's text as if it were at `where` (its relative paths resolve from there)."""
    return config.parse_config(yamlfile.parse_yaml(text, where), Path(where))


def ports(cfg: config.Config) -> tuple[int, int]:
    """The DNS port (every listen address has the same) and the admin API's port."""
    assert cfg.admin.listen is not None
    [dns_port] = {address.port for address in cfg.listen}
    return dns_port, cfg.admin.listen.port


# ---------------------------------------------------------------------------------------------
# systemd


def unit_settings(path: Path) -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if "=" in line and not line.startswith(("#", ";")):
            key, _, value = line.partition("=")
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def test_the_systemd_unit_is_valid_and_confined(tmp_path):
    shipped = DEPLOY / "systemd/schooldns.service"
    # `verify` also checks that ExecStart's program exists: the same command, installed in this
    # venv rather than in /opt/schooldns.
    unit = tmp_path / "schooldns.service"
    unit.write_text(shipped.read_text(encoding="utf-8").replace("/opt/schooldns/bin/schooldns", str(BIN / "schooldns")))
    verified = run(tool("systemd-analyze"), "verify", str(unit))
    assert (verified.returncode, verified.stdout + verified.stderr) == (0, "")
    # Exposure 1.8 of 10 ("OK") as shipped: a loosened sandbox fails here.
    security = run(tool("systemd-analyze"), "security", "--offline=yes", "--threshold=20", str(unit))
    assert security.returncode == 0, security.stdout + security.stderr

    settings = unit_settings(shipped)
    assert settings["Type"] == ["notify"]
    assert settings["User"] == ["schooldns"]
    assert settings["AmbientCapabilities"] == settings["CapabilityBoundingSet"] == ["CAP_NET_BIND_SERVICE"]
    assert settings["ProtectSystem"] == ["strict"]
    assert settings["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert settings["ExecStart"] == ["/opt/schooldns/bin/schooldns serve --config /etc/schooldns/config.yaml"]
    # The config it starts with is deploy/systemd/config.yaml, whose state_dir is the unit's StateDirectory.
    cfg = load_config((DEPLOY / "systemd/config.yaml").read_text(encoding="utf-8"), "/etc/schooldns/config.yaml")
    assert cfg.state_dir == Path("/var/lib") / settings["StateDirectory"][0]
    assert ports(cfg) == (53, 8053) and str(cfg.admin.listen).startswith("127.0.0.1:")


# ---------------------------------------------------------------------------------------------
# container


def dockerfile_stages(path: Path) -> list[list[tuple[str, str]]]:
    """(INSTRUCTION, arguments) per build stage, continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", path.read_text(encoding="utf-8"))
    stages: list[list[tuple[str, str]]] = [[]]
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            instruction, _, arguments = line.strip().partition(" ")
            if instruction.upper() == "FROM":
                stages.append([])
            stages[-1].append((instruction.upper(), arguments.strip()))
    return stages


def test_the_dockerfile_passes_hadolint():
    linted = run(str(BIN / "hadolint"), str(DEPLOY / "container/Dockerfile"))
    assert (linted.returncode, linted.stdout + linted.stderr) == (0, "")


def test_the_image_installs_the_wheel_runs_as_a_user_and_checks_readyz():
    *_, final = dockerfile_stages(DEPLOY / "container/Dockerfile")
    said = dict(final)  # the last of each instruction
    assert any(name == "RUN" and "pip install" in args and "/dist/schooldns-*.whl" in args for name, args in final)
    assert said["USER"] == "10053:10053"
    cfg = load_config((DEPLOY / "container/config.yaml").read_text(encoding="utf-8"), "/etc/schooldns/config.yaml")
    dns_port, admin_port = ports(cfg)
    assert f"http://127.0.0.1:{admin_port}/readyz" in said["HEALTHCHECK"]
    assert said["EXPOSE"].split() == [f"{dns_port}/udp", f"{dns_port}/tcp", f"{admin_port}/tcp"]
    assert said["ENTRYPOINT"] == '["schooldns"]'
    assert said["CMD"] == '["serve", "--config", "/etc/schooldns/config.yaml"]'
    # Every file the build copies is in the build context: present, and let through by the ignore file.
    kept = {
        line[1:].rstrip("/")
        for line in (DEPLOY / "container/Dockerfile.dockerignore").read_text(encoding="utf-8").splitlines()
        if line.startswith("!")
    }
    copied = [
        args.split()[0].rstrip("/")
        for stage in dockerfile_stages(DEPLOY / "container/Dockerfile")
        for name, args in stage
        if name == "COPY" and not args.startswith("--from")
    ]
    assert copied and all((ROOT / source).exists() and source in kept for source in copied), (copied, kept)


def compose_file() -> dict:
    return yaml.safe_load((DEPLOY / "container/compose.yaml").read_text(encoding="utf-8"))


def test_compose_file_follows_the_compose_specification():
    schema = json.loads((ROOT / "tests/data/compose-spec/compose-spec.json").read_text(encoding="utf-8"))
    # It names draft 07 by an address jsonschema does not list ("https://json-schema.org/draft-07/schema").
    assert "draft-07" in schema["$schema"]
    validator = jsonschema.Draft7Validator(schema)
    compose = compose_file()
    assert [error.message for error in validator.iter_errors(compose)] == []
    misspelt = copy.deepcopy(compose)
    misspelt["services"]["schooldns"]["restart_policy"] = "always"  # the check does see a wrong key
    assert [error.message for error in validator.iter_errors(misspelt)] != []


def test_compose_publishes_dns_and_keeps_the_admin_api_and_dashboards_local():
    compose = compose_file()
    schooldns = compose["services"]["schooldns"]
    here = DEPLOY / "container"
    assert (here / schooldns["build"]["context"] / schooldns["build"]["dockerfile"]).is_file()
    assert schooldns["image"] == IMAGE
    policies = next(volume for volume in schooldns["volumes"] if volume.endswith(":/etc/schooldns/policies:ro"))
    assert (here / policies.split(":")[0] / "province.yaml").is_file()
    dns_port, admin_port = ports(load_config((here / "config.yaml").read_text(encoding="utf-8"), "/etc/x.yaml"))
    assert schooldns["ports"] == [
        f"53:{dns_port}/udp",
        f"53:{dns_port}/tcp",
        f"127.0.0.1:{admin_port}:{admin_port}/tcp",
    ]
    for name, service in compose["services"].items():
        if name != "schooldns":
            assert all(published.startswith("127.0.0.1:") for published in service["ports"]), name


def test_compose_mounts_files_that_exist_and_points_prometheus_and_grafana_at_the_services():
    compose = compose_file()
    here = DEPLOY / "container"
    for service in compose["services"].values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):  # a bind mount (the others are named volumes)
                assert (here / source).exists(), volume
    [targets] = yaml.safe_load((here / "prometheus-targets/compose.yml").read_text(encoding="utf-8"))
    _, admin_port = ports(load_config((here / "config.yaml").read_text(encoding="utf-8"), "/etc/x.yaml"))
    assert targets["targets"] == [f"schooldns:{admin_port}"]
    [source] = yaml.safe_load((here / "grafana/datasource.yml").read_text(encoding="utf-8"))["datasources"]
    assert source["url"] == "http://prometheus:9090"
    dashboards = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/schooldns.yml").read_text())
    mounted = {volume.split(":")[1] for volume in compose["services"]["grafana"]["volumes"]}
    assert dashboards["providers"][0]["options"]["path"] in mounted


# ---------------------------------------------------------------------------------------------
# Kubernetes


def kubernetes_resources() -> list[dict]:
    return [
        resource
        for path in sorted((DEPLOY / "k8s").glob("*.yaml"))
        for resource in yaml.safe_load_all(path.read_text(encoding="utf-8"))
        if resource
    ]


# 1.26: the first release with UDP and TCP on one LoadBalancer Service.
@pytest.mark.parametrize("version", ["1.26.0", kubernetes_validate.latest_version()])
def test_kubernetes_manifests_validate(version):
    resources = kubernetes_resources()
    assert sorted(r["kind"] for r in resources) == [
        "ConfigMap",
        "ConfigMap",
        "Deployment",
        "Secret",
        "Service",
        "Service",
    ]
    for resource in resources:
        kubernetes_validate.validate(resource, version, strict=True)


def test_kubernetes_pieces_fit_together(tmp_path):
    resources = kubernetes_resources()
    by_kind_name = {(r["kind"], r["metadata"]["name"]): r for r in resources}
    pod = by_kind_name[("Deployment", "schooldns")]["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert container["image"] == IMAGE and all(init["image"] == IMAGE for init in pod["initContainers"])
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    for volume in volumes.values():
        if "configMap" in volume:
            assert ("ConfigMap", volume["configMap"]["name"]) in by_kind_name
        if "secret" in volume:
            assert ("Secret", volume["secret"]["secretName"]) in by_kind_name
    mounts = {mount["mountPath"]: mount["name"] for mount in container["volumeMounts"]}

    cfg = load_config(by_kind_name[("ConfigMap", "schooldns-config")]["data"]["config.yaml"], "/etc/schooldns/c.yaml")
    assert mounts["/etc/schooldns/config.yaml"] == "config"
    assert mounts[str(cfg.policies_dir)] == "policies"
    assert mounts[str(cfg.state_dir)] == "state"
    assert mounts[str(cfg.admin.tokens_file.parent)] == "private"
    dns_port, admin_port = ports(cfg)
    named = {port["name"]: (port["containerPort"], port["protocol"]) for port in container["ports"]}
    assert named == {"dns-udp": (dns_port, "UDP"), "dns-tcp": (dns_port, "TCP"), "admin": (admin_port, "TCP")}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
    assert (
        container["livenessProbe"]["httpGet"]
        == container["startupProbe"]["httpGet"]
        == {
            "path": "/healthz",
            "port": "admin",
        }
    )
    dns = by_kind_name[("Service", "schooldns")]["spec"]
    assert dns["externalTrafficPolicy"] == "Local"  # the school is found by the client's address
    assert {(p["protocol"], p["port"], p["targetPort"]) for p in dns["ports"]} == {
        ("UDP", 53, "dns-udp"),
        ("TCP", 53, "dns-tcp"),
    }

    # The example policies load against the shipped lists' categories.
    for name, text in by_kind_name[("ConfigMap", "schooldns-policies")]["data"].items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    categories = lists.load_sources(ROOT / "blocklists").categories
    assert [school.id for school in policyfile.load_policies(tmp_path, categories).schools] == ["thpt-nguyen-du"]


# ---------------------------------------------------------------------------------------------
# shell scripts and router recipes

SHELL_SCRIPTS = sorted(
    path for path in DEPLOY.rglob("*") if path.is_file() and path.read_bytes().startswith(b"#!/bin/sh")
)
RECIPES = sorted((DEPLOY / "router").glob("*.sh")) + sorted((DEPLOY / "router").glob("*.rsc"))


def test_shell_scripts_pass_shellcheck():
    assert {path.name for path in SHELL_SCRIPTS} >= {"schooldns", "linux-gateway.sh", "openwrt.sh"}
    checked = run(tool("shellcheck"), *map(str, SHELL_SCRIPTS))
    assert (checked.returncode, checked.stdout + checked.stderr) == (0, "")


def addresses_in(text: str) -> list[str]:
    out = []
    for candidate in re.findall(r"[0-9a-fA-F:.]*[:.][0-9a-fA-F:.]+", text):
        try:
            out.append(str(ipaddress.ip_address(candidate)))
        except ValueError:
            pass
    return out


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda path: path.name)
def test_every_router_recipe_blocks_the_listed_doh_addresses(recipe):
    listed = [
        line.strip()
        for line in (DEPLOY / "router/doh-addresses.txt").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    [block] = re.findall(r"# doh-addresses begin\n(.*?)# doh-addresses end", recipe.read_text(encoding="utf-8"), re.S)
    assert sorted(addresses_in(block)) == sorted(listed)


@pytest.mark.parametrize(
    ("recipe", "variables"),
    [
        ("linux-gateway.sh", {"SCHOOLDNS": "192.0.2.53", "LAN": "eth1"}),
        ("linux-gateway.sh", {"SCHOOLDNS": "192.0.2.53", "SCHOOLDNS6": "2001:db8::53", "LAN": "eth1"}),
        ("openwrt.sh", {"SCHOOLDNS": "192.0.2.53"}),
        ("openwrt.sh", {"SCHOOLDNS": "2001:db8::53", "LAN": "br-pupils"}),
    ],
)
def test_router_rules_are_accepted_by_nftables(tmp_path, recipe, variables):
    printed = run("sh", str(DEPLOY / "router" / recipe), "--print", env={**os.environ, **variables})
    assert printed.returncode == 0, printed.stderr
    rules = tmp_path / "rules.nft"
    rules.write_text(printed.stdout, encoding="utf-8")
    if recipe == "openwrt.sh":  # firewall4 includes the file inside its own table
        (tmp_path / "fw4.nft").write_text(f'table inet fw4 {{\ninclude "{rules}"\n}}\n', encoding="utf-8")
        rules = tmp_path / "fw4.nft"
    # Checked by the kernel (nft -c) in a network namespace of the test's own: nothing is loaded here.
    checked = run("unshare", "--map-root-user", "--net", tool("nft"), "-c", "-f", str(rules))
    assert (checked.returncode, checked.stderr) == (0, ""), printed.stdout


def test_a_router_script_without_the_schooldns_address_says_what_to_set():
    result = run("sh", str(DEPLOY / "router/linux-gateway.sh"), env={"PATH": os.environ["PATH"], "LAN": "eth1"})
    assert result.returncode != 0 and "set SCHOOLDNS to the IPv4 address of the schooldns server" in result.stderr
