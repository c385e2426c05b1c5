"""`mongomux check-config --gateways N`: the connection budget (docs/deploy.md, "Connection
budget") for the members check-config knows: a mongodb+srv upstream's SRV records, resolved
against the loopback DNS server (dns_fixtures), or the seed list. And the configuration's text
in MONGOMUX_CONFIG_TOML, the way the container image is configured, read like a file.

Nothing connects to an upstream: check-config parses, resolves and prints.
"""

from __future__ import annotations

import os
import subprocess

from conftest import ROOT, _binary
from dns_fixtures import dns_server  # noqa: F401  (fixture)


def check_config(*args: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    binary = _binary("MONGOMUX_BIN", ROOT / "target/debug/mongomux")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MONGOMUX_")}
    env.update(env_extra or {})
    return subprocess.run([str(binary), "check-config", *args], capture_output=True, text=True,
                          timeout=30, env=env)


def budget(out: str) -> dict[str, str]:
    """`budget KEY: VALUE` lines as a dict."""
    lines = {}
    for line in out.splitlines():
        if line.startswith("budget ") and ": " in line:
            key, value = line[len("budget "):].split(": ", 1)
            lines[key] = value
    return lines


def test_budget_of_three_gateways_over_srv_members(dns_server):
    dns_server.set_srv("_mongodb._tcp.budget.test.local",
                       [(f"shard-00-0{i}.test.local", 27017) for i in range(3)])
    r = check_config("--upstream", "mongodb+srv://gw:Bq7-budget-secret@budget.test.local/", "--upstream-resolver",
                     dns_server.address, "--pool-size", "10", "--gateways", "3")
    assert r.returncode == 0, r.stderr
    b = budget(r.stdout)
    assert b["gateways"] == "3"
    assert b["members"] == "3 (the SRV records)"
    assert b["pool_size"] == "10 per member"
    assert b["max_upstream_connections"] == "none"
    assert b["per member, one gateway"] == "12 (10 pooled + 2 monitoring)"
    assert b["per member, 3 gateways"] == "36"
    assert b["all members, one gateway"] == "36 (30 pooled + 6 monitoring)"
    assert b["all members, 3 gateways"] == "108"
    assert "budget: keep 36 below" in r.stdout
    assert "Bq7-budget-secret" not in r.stdout + r.stderr

    # Five SRV hosts with a total cap of 25 per gateway: each member may still have its 10.
    dns_server.set_srv("_mongodb._tcp.budget.test.local",
                       [(f"shard-00-0{i}.test.local", 27017) for i in range(5)])
    r = check_config("--upstream", "mongodb+srv://budget.test.local/", "--upstream-resolver",
                     dns_server.address, "--pool-size", "10", "--max-upstream-connections", "25",
                     "--gateways", "4")
    assert r.returncode == 0, r.stderr
    b = budget(r.stdout)
    assert b["members"] == "5 (the SRV records)"
    assert b["per member, 4 gateways"] == "48"
    assert b["all members, one gateway"] == "35 (25 pooled + 10 monitoring)"
    assert b["all members, 4 gateways"] == "140"


def test_budget_from_the_seed_list_and_config_text_in_the_environment():
    toml = 'upstream = "mongodb://a.example:27017,b.example:27017/?replicaSet=rs"\npool_size = 6\n' \
           'max_upstream_connections = 4\n'
    r = check_config("--gateways", "2", env_extra={"MONGOMUX_CONFIG_TOML": toml})
    assert r.returncode == 0, r.stderr
    assert "MONGOMUX_CONFIG_TOML: ok" in r.stdout
    b = budget(r.stdout)
    assert b["members"].startswith("2 (the seed list")
    assert b["pool_size"] == "6 per member"
    assert b["per member, one gateway"] == "6 (4 pooled + 2 monitoring)"
    assert b["per member, 2 gateways"] == "12"
    assert b["all members, 2 gateways"] == "16"


def test_no_budget_without_gateways_and_bad_counts_refused():
    r = check_config("--upstream", "mongodb://a.example/")
    assert r.returncode == 0, r.stderr
    assert "budget" not in r.stdout
    r = check_config("--upstream", "mongodb://a.example/", "--gateways", "0")
    assert r.returncode != 0 and "--gateways" in r.stderr


def test_config_file_and_config_text_are_exclusive(tmp_path):
    f = tmp_path / "gw.toml"
    f.write_text('upstream = "mongodb://a.example/"\n')
    r = check_config(str(f), env_extra={"MONGOMUX_CONFIG_TOML": 'upstream = "mongodb://b.example/"\n'})
    assert r.returncode != 0
    assert "not both" in r.stderr
