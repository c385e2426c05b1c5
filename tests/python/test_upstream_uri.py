"""The upstream connection string through the binary: `mongomux check-config --upstream URI`
with seed lists, `mongodb+srv` names resolved against a DNS server on loopback (dns_fixtures),
options refused by name, and no output that shows a password.

check-config needs no upstream server: it parses, resolves and prints; nothing connects.
"""

from __future__ import annotations

import os
import subprocess

import pytest

from conftest import ROOT, _binary
from dns_fixtures import dns_server, resolve_with  # noqa: F401  (fixture)

PASSWORD = "Zq9-sEcReT-pw"


def check_config(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    binary = _binary("MONGOMUX_BIN", ROOT / "target/debug/mongomux")
    # No MONGOMUX_* from the caller's environment: the flags here are the whole configuration.
    env = {k: v for k, v in os.environ.items() if not k.startswith("MONGOMUX_")}
    env["RUST_BACKTRACE"] = "0"
    return subprocess.run(
        [str(binary), "check-config", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def lines_starting(out: str, prefix: str) -> list[str]:
    return [line[len(prefix):].strip() for line in out.splitlines() if line.startswith(prefix)]


def test_fixture_answers_and_changes_at_runtime(dns_server):
    dns_server.set_srv("_mongodb._tcp.c.test.local", [("a.test.local", 27017)])
    assert resolve_with(dns_server, "_mongodb._tcp.c.test.local", "SRV") == ["0 0 27017 a.test.local."]
    dns_server.set_srv("_mongodb._tcp.c.test.local", [("b.test.local", 27018)])
    assert resolve_with(dns_server, "_mongodb._tcp.c.test.local", "SRV") == ["0 0 27018 b.test.local."]


def test_srv_uri_resolves_against_the_loopback_server(dns_server):
    dns_server.set_srv(
        "_mongodb._tcp.cluster0.test.local",
        [("shard-00-00.test.local", 27017), ("shard-00-01.test.local", 27018), ("shard-00-02.test.local", 27019)],
        ttl=120,
    )
    dns_server.set_txt("cluster0.test.local", [["replicaSet=atlas-xyz-", "shard-0&authSource=admin"]])
    uri = f"mongodb+srv://gw:{PASSWORD}@cluster0.test.local/?retryWrites=true&w=majority&appName=Cluster0"
    r = check_config("--upstream", uri, "--upstream-resolver", dns_server.address)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert lines_starting(out, "upstream members:") == [
        "shard-00-00.test.local:27017, shard-00-01.test.local:27018, shard-00-02.test.local:27019"
    ]
    assert "_mongodb._tcp.cluster0.test.local." in out
    assert "replicaSet=atlas-xyz-shard-0" in out
    assert "tls=true" in out
    assert "as gw (authSource admin)" in out
    assert PASSWORD not in out + r.stderr
    assert ("_mongodb._tcp.cluster0.test.local.", "SRV") in dns_server.queries
    assert ("cluster0.test.local.", "TXT") in dns_server.queries

    # The record changes: the next check sees the new members, and srvMaxHosts picks a subset.
    dns_server.set_srv("_mongodb._tcp.cluster0.test.local", [("shard-00-03.test.local", 27020)])
    dns_server.remove("cluster0.test.local", "TXT")
    r = check_config("--upstream", "mongodb+srv://cluster0.test.local/", "--upstream-resolver", dns_server.address)
    assert r.returncode == 0, r.stderr
    assert lines_starting(r.stdout, "upstream members:") == ["shard-00-03.test.local:27020"]
    dns_server.set_srv(
        "_mongodb._tcp.cluster0.test.local", [(f"m{i}.test.local", 27017) for i in range(5)]
    )
    r = check_config("--upstream", "mongodb+srv://cluster0.test.local/?srvMaxHosts=2", "--upstream-resolver", dns_server.address)
    assert r.returncode == 0, r.stderr
    assert len(lines_starting(r.stdout, "upstream members:")[0].split(", ")) == 2


@pytest.mark.parametrize(
    "records, needle",
    [
        ({"srv": [("evil.example.com", 27017)]}, "evil.example.com"),
        ({"srv": [("a.test.local", 27017)], "txt": ["ssl=false"]}, "ssl"),
        ({"srv": [("a.test.local", 27017)], "txt": ["replicaSet=a", "authSource=b"]}, "2 records"),
        ({"srv": [("a.test.local", 1), ("b.test.local", 2)], "txt": ["loadBalanced=true"]}, "loadBalanced"),
        ({}, "_mongodb._tcp.cluster0.test.local"),
    ],
)
def test_srv_rules_refuse_bad_records(dns_server, records, needle):
    if "srv" in records:
        dns_server.set_srv("_mongodb._tcp.cluster0.test.local", records["srv"])
    if "txt" in records:
        dns_server.set_txt("cluster0.test.local", records["txt"])
    uri = f"mongodb+srv://gw:{PASSWORD}@cluster0.test.local/"
    r = check_config("--upstream", uri, "--upstream-resolver", dns_server.address)
    assert r.returncode == 1, r.stdout
    assert needle in r.stderr, r.stderr
    assert PASSWORD not in r.stdout + r.stderr


def test_custom_service_name(dns_server):
    dns_server.set_srv("_custom._tcp.cluster0.test.local", [("a.test.local", 27100)])
    r = check_config(
        "--upstream", "mongodb+srv://cluster0.test.local/?srvServiceName=custom&tls=false",
        "--upstream-resolver", dns_server.address,
    )
    assert r.returncode == 0, r.stderr
    assert lines_starting(r.stdout, "upstream members:") == ["a.test.local:27100"]
    assert "tls=false" in r.stdout


@pytest.mark.parametrize(
    "uri",
    [
        "mongodb://gw:pw@a.example:27017,b.example:27017,c.example:27017/?replicaSet=atlas-xyz-shard-0&tls=true&authSource=admin",
        "mongodb://a.example:27017/?authMechanism=MONGODB-AWS&authSource=$external&tls=true",
    ],
)
def test_seed_list_examples_pass(uri):
    r = check_config("--upstream", uri)
    assert r.returncode == 0, r.stderr
    assert r.stdout.rstrip().endswith("configuration: ok")


def test_srv_example_without_dns_says_the_lookup_failed(dns_server):
    # The resolver knows nothing: as with no DNS at all, the error names the SRV name.
    uri = "mongodb+srv://gw:pw@cluster0.abcde.mongodb.net/?retryWrites=true&w=majority&appName=Cluster0"
    r = check_config("--upstream", uri, "--upstream-resolver", dns_server.address)
    assert r.returncode == 1
    assert "SRV lookup of _mongodb._tcp.cluster0.abcde.mongodb.net. failed" in r.stderr, r.stderr
    assert "panicked" not in r.stderr


@pytest.mark.parametrize(
    "uri, named",
    [
        (f"mongodb://gw:{PASSWORD}@h/?bogus=1", "bogus"),
        (f"mongodb://gw:{PASSWORD}@h/?tlsInsecure=true", "tlsInsecure"),
        (f"mongodb://gw:{PASSWORD}@h/?tlsAllowInvalidCertificates=true", "tlsAllowInvalidCertificates"),
        (f"mongodb://gw:{PASSWORD}@h/?authMechanism=PLAIN", "PLAIN"),
        (f"mongodb://gw:{PASSWORD}@h/?authMechanism=MONGODB-X509", "MONGODB-X509"),
        (f"mongodb+srv://gw:{PASSWORD}@c.test.local/?directConnection=true", "directConnection"),
        (f"mongodb://gw:{PASSWORD}?x@h/", "unknown upstream URI option"),
        (f"mongodb://gw:{PASSWORD}@h:port/", "port"),
    ],
)
def test_bad_uris_are_refused_without_the_password(uri, named):
    r = check_config("--upstream", uri)
    assert r.returncode == 1, r.stdout
    assert named in r.stderr, r.stderr
    for i in range(len(PASSWORD) - 3):
        assert PASSWORD[i:i + 4].lower() not in (r.stdout + r.stderr).lower(), r.stderr


def test_config_file_with_resolver_setting(dns_server, tmp_path):
    dns_server.set_srv("_mongodb._tcp.cluster0.test.local", [("a.test.local", 27017)])
    conf = tmp_path / "mongomux.toml"
    conf.write_text(
        'upstream = "mongodb+srv://cluster0.test.local/"\n'
        f'upstream_resolver = "{dns_server.address}"\n'
        'upstream_srv_rescan_interval = "2s"\n'
    )
    r = check_config(str(conf))
    assert r.returncode == 0, r.stderr
    assert lines_starting(r.stdout, "upstream members:") == ["a.test.local:27017"]
    assert r.stdout.rstrip().endswith(f"{conf}: ok")
