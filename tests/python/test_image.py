"""The container image (scripts/build-image, the Dockerfile): unpacked, checked, and its
entrypoint run from its own root file system against FerretDB.

No container runtime can run here (none can set resource limits in this sandbox), so the test
does what a runtime would: unpacks the OCI archive with umoci, reads the image configuration
(Entrypoint, User, Env), and starts the entrypoint inside the unpacked root file system with
`chroot --userspec=UID:GID` (as root; otherwise through the image's own dynamic loader, as the
calling user), with the configuration only in environment variables, as deploy/template.yaml
passes it: the upstream, its credentials, and a gateway user in MONGOMUX_CONFIG_TOML.

    MONGOMUX_IMAGE           the archive [target/image/mongomux-oci.tar]
    MONGOMUX_IMAGE_REQUIRED  set (scripts/test sets it): a missing archive fails instead of
                             skipping
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import stat
import subprocess
import tarfile
import threading
import time
from pathlib import Path

import pymongo
import pytest

from conftest import LISTENING, ROOT, Proc, _running, _spawn, tail

ARCHIVE = Path(os.environ.get("MONGOMUX_IMAGE") or ROOT / "target/image/mongomux-oci.tar")
REQUIRED = bool(os.environ.get("MONGOMUX_IMAGE_REQUIRED"))
ENTRYPOINT = ["/usr/local/bin/mongomux", "serve"]
USER = "65532:65532"
GATEWAY_USER, GATEWAY_PASSWORD = "imgtest", "image-pw-8d2f"

pytestmark = pytest.mark.skipif(
    not ARCHIVE.exists() and not REQUIRED,
    reason=f"no image archive at {ARCHIVE}: run scripts/build-image (scripts/test does, and sets "
           f"MONGOMUX_IMAGE_REQUIRED so that a missing image fails)",
)


class Image:
    def __init__(self, config: dict, rootfs: Path):
        self.config = config  # the image configuration's "config" object
        self.rootfs = rootfs

    def command(self, args: list[str]) -> list[str]:
        """How to run `args` (an absolute path in the image first) inside the root file system,
        as the image's user when this process may change user."""
        if os.geteuid() == 0:
            # Found on this machine's PATH: the child's environment is the image's.
            chroot = shutil.which("chroot") or "/usr/sbin/chroot"
            return [chroot, f"--userspec={self.config['User']}", str(self.rootfs), *args]
        # Not root: no chroot. The image's own loader and libraries run the image's binary.
        loader = next(self.rootfs.glob("lib64/ld-linux-*.so.*"))
        lib_dirs = sorted({str(p.parent) for p in self.rootfs.rglob("*.so*") if p.is_file()})
        return [str(loader), "--library-path", ":".join(lib_dirs), str(self.rootfs / args[0].lstrip("/")), *args[1:]]

    def env(self, **settings: str) -> dict:
        """The image's Env, then `settings` over it (as `docker run -e` does), and nothing else."""
        env = dict(e.split("=", 1) for e in self.config.get("Env", []))
        env.update(settings)
        return env


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Image:
    if not ARCHIVE.exists():
        pytest.fail(f"MONGOMUX_IMAGE_REQUIRED is set, but there is no image archive at {ARCHIVE} (scripts/build-image)")
    umoci = shutil.which("umoci")
    assert umoci, "umoci is not installed (scripts/install-deps installs it)"
    work = tmp_path_factory.mktemp("image")
    layout, bundle = work / "oci", work / "bundle"
    with tarfile.open(ARCHIVE) as tar:
        # Our own archive; the "data" filter (Python 3.11.4+) refuses links out of the folder.
        tar.extractall(layout, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    index = json.loads((layout / "index.json").read_text())
    assert len(index["manifests"]) == 1, index
    desc = index["manifests"][0]
    tag = desc["annotations"]["org.opencontainers.image.ref.name"]

    def blob(digest: str) -> dict:
        algo, hexdigest = digest.split(":")
        return json.loads((layout / "blobs" / algo / hexdigest).read_text())

    manifest = blob(desc["digest"])
    config = blob(manifest["config"]["digest"])
    assert config["os"] == "linux", config
    rootless = [] if os.geteuid() == 0 else ["--rootless"]
    subprocess.run([umoci, "unpack", *rootless, "--image", f"{layout}:{tag}", str(bundle)],
                   check=True, capture_output=True)
    return Image(config["config"], bundle / "rootfs")


def test_image_configuration(image):
    cfg = image.config
    assert cfg["Entrypoint"] == ENTRYPOINT, cfg
    assert not cfg.get("Cmd"), cfg
    assert cfg["User"] == USER, cfg
    uid, gid = (int(x) for x in cfg["User"].split(":"))
    assert uid != 0 and gid != 0, "the image must not run as root"
    env = image.env()
    assert env["MONGOMUX_LISTEN"] == "0.0.0.0:27017", env
    assert "27017/tcp" in cfg["ExposedPorts"], cfg
    assert cfg["Labels"]["org.opencontainers.image.title"] == "mongomux", cfg
    # The user the image names exists in its passwd (tools that print names look there).
    passwd = (image.rootfs / "etc/passwd").read_text().splitlines()
    assert any(line.split(":")[2:4] == [str(uid), str(gid)] for line in passwd), passwd


def test_image_has_no_shell_and_only_the_gateway(image):
    files = sorted(str(p.relative_to(image.rootfs)) for p in image.rootfs.rglob("*") if not p.is_dir())
    for shell in ("bin/sh", "usr/bin/sh", "bin/bash", "bin/dash", "bin/busybox"):
        assert not (image.rootfs / shell).exists(), f"{shell} is in the image"
    assert not any(Path(f).name in ("sh", "bash", "dash", "ash", "busybox") for f in files), files
    # Executables: the gateway, and the shared libraries and loader it links (nothing else).
    executables = [f for f in files
                   if (image.rootfs / f).stat().st_mode & stat.S_IXUSR and ".so" not in Path(f).name]
    assert executables == ["usr/local/bin/mongomux"], executables
    assert (image.rootfs / "etc/ssl/certs/ca-certificates.crt").stat().st_size > 10_000
    # Owned by root and not writable by the image's user: the gateway cannot change itself.
    st = (image.rootfs / "usr/local/bin/mongomux").stat()
    if os.geteuid() == 0:
        assert st.st_uid == 0 and not st.st_mode & stat.S_IWOTH, oct(st.st_mode)


def _user_entry(image: Image) -> str:
    """A [[users]] entry made by the image's own `mongomux user add` (password on stdin)."""
    r = subprocess.run(image.command(["/usr/local/bin/mongomux", "user", "add", GATEWAY_USER, "--db", "admin"]),
                       input=GATEWAY_PASSWORD + "\n", capture_output=True, text=True, timeout=60,
                       env=image.env())
    assert r.returncode == 0, r.stderr
    assert GATEWAY_PASSWORD not in r.stdout
    return r.stdout


def _start(image: Image, env: dict, logdir: Path) -> tuple[Proc, int]:
    cmd = image.command(image.config["Entrypoint"] + (image.config.get("Cmd") or []))
    popen, log = _spawn("mongomux-image", cmd, logdir, env, stdout_pipe=True)
    lines: queue.Queue = queue.Queue()

    def pump():
        with open(log, "ab") as f:
            for raw in popen.stdout:
                f.write(b"[stdout] " + raw)
                f.flush()
                lines.put(raw.decode(errors="replace").rstrip("\n"))
        lines.put(None)

    threading.Thread(target=pump, daemon=True, name="mongomux-image-stdout").start()
    deadline = time.monotonic() + 20
    while True:
        try:
            line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            popen.kill()
            popen.wait()
            raise AssertionError(f"the image's gateway did not print 'listening on' in 20s:\n{tail(log)}")
        if line is None:
            popen.wait()
            raise AssertionError(f"the image's gateway exited with {popen.returncode}:\n{tail(log)}")
        if m := LISTENING.match(line):
            proc = Proc("mongomux-image", popen, int(m.group(2)), log)
            _running.append(proc)
            return proc, int(m.group(2))


def _status_ids(pid: int, field: str) -> list[int]:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return [int(x) for x in line.split()[1:]]
    raise AssertionError(f"no {field} in /proc/{pid}/status")


@pytest.mark.timeout(120)
def test_entrypoint_serves_ping_and_find_through_to_ferretdb(image, ferretdb, logdir):
    users = _user_entry(image)
    # The whole configuration in environment variables, no flag and no file: what
    # deploy/template.yaml's task definition passes (its Secrets become these variables too).
    env = image.env(
        MONGOMUX_LISTEN="127.0.0.1:0",
        MONGOMUX_UPSTREAM=ferretdb.gateway_upstream_uri(),
        MONGOMUX_UPSTREAM_USERNAME=ferretdb.username,
        MONGOMUX_UPSTREAM_PASSWORD=ferretdb.password,
        MONGOMUX_POOL_SIZE="2",
        MONGOMUX_DRAIN_TIMEOUT="2s",
        MONGOMUX_CONFIG_TOML=users,
    )
    proc, port = _start(image, env, logdir)
    try:
        # Runs as the image's user, from the image's root file system.
        uid, gid = (int(x) for x in image.config["User"].split(":"))
        if os.geteuid() == 0:
            assert _status_ids(proc.pid, "Uid") == [uid] * 4
            assert _status_ids(proc.pid, "Gid") == [gid] * 4
            assert os.readlink(f"/proc/{proc.pid}/root") == str(image.rootfs)
        else:
            assert _status_ids(proc.pid, "Uid")[0] != 0
        assert os.readlink(f"/proc/{proc.pid}/exe").endswith("/usr/local/bin/mongomux")

        seed = ferretdb.client()
        coll = seed["imagetest"]["docs"]
        coll.drop()
        coll.insert_many([{"_id": i, "n": i * i} for i in range(25)])
        seed.close()

        with pymongo.MongoClient(f"mongodb://{GATEWAY_USER}:{GATEWAY_PASSWORD}@127.0.0.1:{port}/?authSource=admin",
                                 serverSelectionTimeoutMS=10_000) as c:
            assert c.admin.command("ping")["ok"] == 1
            docs = list(c["imagetest"]["docs"].find({"n": {"$gte": 100}}, batch_size=5).sort("_id", 1))
            assert [d["_id"] for d in docs] == list(range(10, 25))
        # Without the user's credentials the gateway refuses: the users came from the env.
        with pymongo.MongoClient(f"127.0.0.1:{port}", serverSelectionTimeoutMS=5_000) as c:
            with pytest.raises(pymongo.errors.OperationFailure):
                c["imagetest"]["docs"].find_one()
    finally:
        code = proc.stop(signal.SIGTERM)
    assert code == 0, f"the image's gateway exited with {code} on SIGTERM:\n{tail(proc.log)}"
    assert ferretdb.password not in proc.log.read_text()
