"""A second, real Docker Engine for the tests: "another host" on this machine.

``RemoteEngine().start()`` makes a network namespace ``orch-remote-<tag>`` joined to the host by a
veth pair (host side 10.213.N.1/30, namespace side 10.213.N.2/30: the engine's address), and runs
in it, as root:

- ``dockerd`` (under ``nsenter --net``, which keeps the host's /sys and cgroups, and its own UTS
  namespace so that it reports its own name) with its own data root, exec root, pid file, config
  file, engine ID, cgroup parent and bridge (10.214.N.1/24), listening on a unix socket under
  /run/orch-remote-<tag>/ and on tcp://10.213.N.2:2376 with TLS that verifies clients
  (certificates made here: a CA, the engine's with the namespace address as IP SAN, a client's);
- ``sshd`` on 10.213.N.2:22 with its own config, host key and authorized key (root, by key only),
  whose sessions get ``DOCKER_HOST`` pointing at that engine's socket, so that ``docker system
  dial-stdio`` (what Docker's ssh:// transport runs) reaches the remote engine and not the local one.
  It runs in a mount namespace of its own whose /etc/passwd gives root /bin/sh: bash, this
  machine's root shell, reads /root/.bashrc in an ssh session (slow here, and it may set anything).

The client side never touches ~/.ssh: ``ssh_env()`` gives a HOME of its own and a PATH whose ``ssh``
reads that HOME's ``.ssh/config`` (OpenSSH takes the home folder from the password database, not
from $HOME, so the wrapper names the config file with ``-F``). That config multiplexes one
connection (ControlMaster): docker-py opens an ssh connection for every API call.

Everything lives under /var/lib/orch-remote-tests/<tag>/ (and the socket's folder under /run);
``stop()`` removes it all whatever state it is in, and ``cleanup_leftovers()`` (run by ``start()``)
removes what a killed run left: namespaces whose owning test process is gone, their dockerd,
containerd, shims, containers and sshd, their mounts and folders.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

PARENT = Path("/var/lib/orch-remote-tests")
RUN_PARENT = Path("/run")
PREFIX = "orch-remote-"
START_TIMEOUT = 90.0
SSHD = "/usr/sbin/sshd"


class RemoteEngineError(RuntimeError):
    pass


def _run(*argv: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=kw.pop("timeout", 60), **kw)
    if check and proc.returncode != 0:
        raise RemoteEngineError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:    # a zombie is gone for our purposes
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return False


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def _pids_mentioning(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            if any(text in part for part in _cmdline(int(entry.name))):
                found.append(int(entry.name))
    return found


def _read_pid(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _stop_pid(pid: int | None, *, must_mention: str, timeout: float = 20.0) -> None:
    """SIGTERM the process (only if its command line mentions ``must_mention``: a pid file may name
    a pid reused since), then SIGKILL it after ``timeout``."""
    if not pid or not _alive(pid) or not any(must_mention in part for part in _cmdline(pid)):
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.1)
    if _alive(pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.05)


def _unmount_under(*roots: Path) -> None:
    """Unmount every mount point at or under the given folders, deepest first."""
    prefixes = [str(r).rstrip("/") for r in roots]
    points = []
    try:
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            point = line.split()[4].replace("\\040", " ")
            if any(point == p or point.startswith(p + "/") for p in prefixes):
                points.append(point)
    except OSError:
        return
    for point in sorted(set(points), key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True)


def _used_networks() -> list[ipaddress.IPv4Network]:
    nets = []
    out = _run("ip", "-4", "-o", "addr", "show", check=False).stdout
    for match in re.finditer(r"inet (\S+)", out):
        nets.append(ipaddress.ip_interface(match.group(1)).network)
    for line in _run("ip", "-4", "route", "show", "table", "all", check=False).stdout.splitlines():
        first = line.split()[0] if line.split() else ""
        if first[:1].isdigit():
            try:
                nets.append(ipaddress.ip_network(first, strict=False))
            except ValueError:
                pass
    return nets


class RemoteEngine:
    def __init__(self, tag: str | None = None):
        self.tag = tag or secrets.token_hex(3)
        self.netns = PREFIX + self.tag
        self.dir = PARENT / self.tag
        self.run_dir = RUN_PARENT / (PREFIX + self.tag)
        self.socket = self.run_dir / "docker.sock"
        self.data_root, self.exec_root = self.dir / "data", self.dir / "exec"
        self.cert_dir = self.dir / "client"          # ca.pem, cert.pem, key.pem of a trusted client
        self.tls_dir = self.dir / "tls"              # the engine's side
        self.ssh_dir = self.dir / "sshd"
        self.home = self.dir / "home"                # the ssh client's HOME
        self.bin = self.dir / "bin"                  # its ssh wrapper
        self.veth_host, self.veth_ns = f"orh{self.tag}", f"orn{self.tag}"
        self.index: int | None = None
        self.address = self.host_address = ""
        self.bridge = ""
        self._dockerd: subprocess.Popen | None = None
        self._sshd: subprocess.Popen | None = None
        self._client = None

    # -- addresses --------------------------------------------------------------------------

    def _pick_index(self) -> int:
        used = _used_networks()
        for _ in range(200):
            n = secrets.randbelow(250) + 1
            mine = [ipaddress.ip_network(f"10.213.{n}.0/30"), ipaddress.ip_network(f"10.214.{n}.0/24")]
            if not any(a.overlaps(b) for a in mine for b in used if b.prefixlen > 0):
                return n
        raise RemoteEngineError("no free 10.213.N.0/30 and 10.214.N.0/24 pair")

    @property
    def docker_host_unix(self) -> str:
        return f"unix://{self.socket}"

    @property
    def tcp_url(self) -> str:
        return f"tcp://{self.address}:2376"

    @property
    def ssh_url(self) -> str:
        return f"ssh://root@{self.address}"

    # -- start ------------------------------------------------------------------------------

    def start(self) -> "RemoteEngine":
        cleanup_leftovers()
        try:
            self._prepare_dirs()
            self._make_namespace()
            self._make_certificates()
            self._start_dockerd()
            self._start_sshd()
        except BaseException:
            self.stop()
            raise
        return self

    def _prepare_dirs(self) -> None:
        for path in (self.dir, self.run_dir):
            path.mkdir(parents=True, exist_ok=False, mode=0o700)
        (self.dir / "owner").write_text(f"{os.getpid()}\n")
        for path in (self.data_root, self.exec_root, self.cert_dir, self.tls_dir, self.ssh_dir,
                     self.home / ".ssh", self.bin):
            path.mkdir(parents=True, mode=0o700)

    def _make_namespace(self) -> None:
        self.index = self._pick_index()
        n = self.index
        self.host_address, self.address = f"10.213.{n}.1", f"10.213.{n}.2"
        self.bridge = f"10.214.{n}.1/24"
        _run("ip", "netns", "add", self.netns)
        _run("ip", "link", "add", self.veth_host, "type", "veth", "peer", "name", self.veth_ns)
        _run("ip", "link", "set", self.veth_ns, "netns", self.netns)
        _run("ip", "addr", "add", f"{self.host_address}/30", "dev", self.veth_host)
        _run("ip", "link", "set", self.veth_host, "up")
        ns = ["ip", "-n", self.netns]
        _run(*ns, "addr", "add", f"{self.address}/30", "dev", self.veth_ns)
        _run(*ns, "link", "set", self.veth_ns, "up")
        _run(*ns, "link", "set", "lo", "up")

    # -- certificates -----------------------------------------------------------------------

    def _make_certificates(self) -> None:
        ca = make_ca(self.tls_dir, "orch-remote test CA " + self.tag)
        make_cert(self.tls_dir, "server-", ca, "orch-remote engine", server_ip=self.address)
        make_cert(self.cert_dir, "", ca, "orch-remote client")
        shutil.copy(ca[1], self.cert_dir / "ca.pem")

    def untrusted_cert_dir(self, kind: str) -> Path:
        """A client's certificate folder the engine must refuse: ``"no-cert"`` (only the right CA,
        no client certificate), ``"other-ca"`` (a client certificate from another CA); and one that must refuse the engine:
        ``"wrong-ca"`` (the right client certificate, but another CA to check the engine's by)."""
        path = self.dir / f"client-{kind}"
        if path.exists():
            return path
        path.mkdir(mode=0o700)
        if kind == "no-cert":
            shutil.copy(self.cert_dir / "ca.pem", path / "ca.pem")
        elif kind == "other-ca":
            other = path / "other-ca"
            other.mkdir()
            make_cert(path, "", make_ca(other, "another CA"), "a stranger")
            shutil.copy(self.cert_dir / "ca.pem", path / "ca.pem")   # it trusts the engine; the engine not it
        elif kind == "wrong-ca":
            other = path / "other-ca"
            other.mkdir()
            shutil.copy(make_ca(other, "another CA")[1], path / "ca.pem")   # the engine's is not signed by it
            for name in ("cert.pem", "key.pem"):
                shutil.copy(self.cert_dir / name, path / name)
        else:
            raise ValueError(kind)
        return path

    # -- dockerd ----------------------------------------------------------------------------

    def _start_dockerd(self) -> None:
        config = self.dir / "daemon.json"
        # its own engine ID (the ID's key file defaults to /etc/docker/key.json, the local engine's)
        config.write_text(json.dumps({"deprecated-key-path": str(self.dir / "key.json")}) + "\n")
        argv = [
            "unshare", "--uts", "--", "nsenter", f"--net=/var/run/netns/{self.netns}", "--",
            "sh", "-c", 'hostname "$0" && exec "$@"', self.netns,
            "dockerd", "--config-file", str(config),
            "--data-root", str(self.data_root), "--exec-root", str(self.exec_root),
            "--pidfile", str(self.dir / "dockerd.pid"),
            "--cgroup-parent", f"/{self.netns}",
            "--bip", self.bridge, "--storage-driver", self._storage_driver(),
            "-H", self.docker_host_unix,
            "-H", f"tcp://{self.address}:2376", "--tlsverify",
            "--tlscacert", str(self.tls_dir / "ca.pem"), "--tlscert", str(self.tls_dir / "server-cert.pem"),
            "--tlskey", str(self.tls_dir / "server-key.pem"),
        ]
        log = open(self.dir / "dockerd.log", "ab")
        try:
            self._dockerd = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                             start_new_session=True)
        finally:
            log.close()
        import docker
        deadline = time.monotonic() + START_TIMEOUT
        last = None
        while time.monotonic() < deadline:
            if self._dockerd.poll() is not None:
                raise RemoteEngineError(f"dockerd exited ({self._dockerd.returncode}) on start:\n{self.log_tail()}")
            if self.socket.exists():
                try:
                    client = docker.DockerClient(base_url=self.docker_host_unix, timeout=30)
                    client.ping()
                    self._client = client
                    break
                except Exception as exc:      # not listening yet
                    last = exc
            time.sleep(0.2)
        else:
            raise RemoteEngineError(f"dockerd did not answer on {self.socket} within {START_TIMEOUT:.0f} s "
                                    f"({last}):\n{self.log_tail()}")
        # and on TCP (it may listen there a moment later than on the socket)
        _wait_port(self.address, 2376, deadline, lambda: self.log_tail())

    @staticmethod
    def _storage_driver() -> str:
        """overlay2 where the kernel has overlayfs (fast), else vfs (works everywhere)."""
        try:
            if "\toverlay\n" in Path("/proc/filesystems").read_text():
                return "overlay2"
        except OSError:
            pass
        return "vfs"

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join((self.dir / "dockerd.log").read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no dockerd log)"

    # -- sshd -------------------------------------------------------------------------------

    def _start_sshd(self) -> None:
        if not os.access(SSHD, os.X_OK):
            raise RemoteEngineError(f"{SSHD} is missing: apt-get install openssh-server")
        d = self.ssh_dir
        _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "orch-remote host", "-f", str(d / "host_key"))
        key = self.home / ".ssh" / "id_ed25519"
        _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "orch-remote client", "-f", str(key))
        shutil.copy(key.with_suffix(".pub"), d / "authorized_keys")
        os.chmod(d / "authorized_keys", 0o600)
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)      # sshd's privilege separation folder
        (d / "sshd_config").write_text(f"""\
# orch-remote test sshd: root by key only, its sessions talk to the remote engine
Port 22
ListenAddress {self.address}
HostKey {d / 'host_key'}
PidFile {d / 'sshd.pid'}
AuthorizedKeysFile {d / 'authorized_keys'}
PermitRootLogin prohibit-password
AuthenticationMethods publickey
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
X11Forwarding no
PrintMotd no
MaxStartups 50:30:100
MaxSessions 50
SetEnv DOCKER_HOST={self.docker_host_unix}
""")
        _run(SSHD, "-t", "-f", str(d / "sshd_config"))
        # The "other host's" root logs in to /bin/sh: this machine's root shell is bash, which an
        # sshd session makes read /root/.bashrc (slow here, and anything could be set there). sshd
        # runs in a mount namespace of its own, where /etc/passwd is a copy saying so.
        passwd = d / "passwd"
        passwd.write_text("".join(
            ":".join(f[:6] + ["/bin/sh"]) + "\n" if (f := line.split(":"))[0] == "root" and len(f) == 7 else line + "\n"
            for line in Path("/etc/passwd").read_text().splitlines()))
        log = open(self.dir / "sshd.log", "ab")
        try:
            self._sshd = subprocess.Popen(
                ["unshare", "--mount", "--propagation", "private", "--",
                 "sh", "-c", 'mount --bind "$0" /etc/passwd && exec "$@"', str(passwd),
                 "nsenter", f"--net=/var/run/netns/{self.netns}", "--", SSHD, "-D", "-e", "-f", str(d / "sshd_config")],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        finally:
            log.close()
        _wait_port(self.address, 22, time.monotonic() + 30, self._sshd_log)
        ssh = self.home / ".ssh"
        (ssh / "config").write_text(f"""\
Host {self.address}
  User root
  IdentityFile {key}
  IdentitiesOnly yes
  StrictHostKeyChecking accept-new
  UserKnownHostsFile {ssh / 'known_hosts'}
  GlobalKnownHostsFile /dev/null
  BatchMode yes
  ConnectTimeout 15
  ServerAliveInterval 5
  # one connection for the many a run makes (docker-py opens one per API call)
  ControlMaster auto
  ControlPath {ssh / 'mux-%C'}
  ControlPersist 120
""")
        # OpenSSH reads the config of the home folder in /etc/passwd, never $HOME: this ssh reads ours
        wrapper = self.bin / "ssh"
        wrapper.write_text(f'#!/bin/sh\nexec /usr/bin/ssh -F "{ssh / "config"}" "$@"\n')
        wrapper.chmod(0o755)

    def _sshd_log(self) -> str:
        try:
            return (self.dir / "sshd.log").read_text(errors="replace")[-3000:]
        except OSError:
            return "(no sshd log)"

    # -- what tests use ---------------------------------------------------------------------

    def client(self):
        """A docker.DockerClient to the remote engine over its unix socket (for assertions)."""
        import docker
        if self._client is None:
            self._client = docker.DockerClient(base_url=self.docker_host_unix, timeout=120)
        return self._client

    def tls_env(self, cert_dir: Path | None = None) -> dict[str, str]:
        return {"DOCKER_HOST": self.tcp_url, "DOCKER_TLS_VERIFY": "1",
                "DOCKER_CERT_PATH": str(cert_dir or self.cert_dir)}

    def ssh_env(self) -> dict[str, str]:
        return {"DOCKER_HOST": self.ssh_url, "HOME": str(self.home),
                "PATH": f"{self.bin}:{os.environ.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}"}

    def tls_config(self, cert_dir: Path | None = None):
        import docker
        d = Path(cert_dir or self.cert_dir)
        cert = (str(d / "cert.pem"), str(d / "key.pem")) if (d / "cert.pem").exists() else None
        return docker.tls.TLSConfig(client_cert=cert, ca_cert=str(d / "ca.pem"), verify=str(d / "ca.pem"))

    def load(self, image_ref: str, local_client=None) -> None:
        """Copy an image of the local engine into the remote one (docker save | docker load)."""
        import docker
        local = local_client or docker.from_env()
        data = local.api.get_image(image_ref)
        self.client().api.load_image(_Chunks(data), quiet=True)

    def labelled(self, label: str) -> dict[str, list[str]]:
        """Names of the remote engine's containers, volumes and networks carrying ``label``."""
        return labelled(self.client(), label)

    # -- stop -------------------------------------------------------------------------------

    def stop(self) -> None:
        """Remove everything this engine is and made, whatever state it is in."""
        client, self._client = self._client, None
        if client is not None and self._dockerd is not None and self._dockerd.poll() is None:
            try:   # its containers, killed now (a dockerd that stops them politely takes 10 s each)
                for c in client.api.containers(all=True, quiet=True):
                    try:
                        client.api.remove_container(c["Id"], force=True)
                    except Exception:
                        pass
            except Exception:
                pass
            try:
                client.close()
            except Exception:
                pass
        _teardown(self.tag, self.dir, dockerd=self._dockerd, sshd=self._sshd)
        self._dockerd = self._sshd = None

    def __enter__(self) -> "RemoteEngine":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class _Chunks:
    """A file-like view of an iterator of bytes (the local engine's image tarball streamed to the
    remote one without holding it all)."""

    def __init__(self, chunks):
        self._it = iter(chunks)
        self._buf = b""

    def read(self, n: int = -1) -> bytes:
        while n < 0 or len(self._buf) < n:
            try:
                self._buf += next(self._it)
            except StopIteration:
                break
        if n < 0:
            out, self._buf = self._buf, b""
        else:
            out, self._buf = self._buf[:n], self._buf[n:]
        return out

    def __iter__(self):
        if self._buf:
            yield self._buf
            self._buf = b""
        yield from self._it


def labelled(client, label: str) -> dict[str, list[str]]:
    flt = {"label": label}
    return {
        "containers": sorted(c["Names"][0].lstrip("/") for c in client.api.containers(all=True, filters=flt)),
        "volumes": sorted(v["Name"] for v in (client.api.volumes(filters=flt).get("Volumes") or [])),
        "networks": sorted(n["Name"] for n in client.api.networks(filters=flt)),
    }


def _wait_port(host: str, port: int, deadline: float, log) -> None:
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise RemoteEngineError(f"nothing listens on {host}:{port} in time:\n{log()}")


def _teardown(tag: str, folder: Path, *, dockerd=None, sshd=None) -> None:
    netns = PREFIX + tag
    exec_root, data_root = folder / "exec", folder / "data"
    for proc in (sshd, dockerd):
        if proc is not None and proc.poll() is None:
            proc.terminate()
    if sshd is not None:
        _wait_proc(sshd, 10)
    _stop_pid(_read_pid(folder / "sshd" / "sshd.pid"), must_mention="sshd")
    if dockerd is not None:
        _wait_proc(dockerd, 25)
    _stop_pid(_read_pid(folder / "dockerd.pid"), must_mention="dockerd")
    _stop_pid(_read_pid(exec_root / "containerd" / "containerd.pid"), must_mention="containerd")
    # containers whose dockerd was killed: runc still knows them under our exec root
    runc_root = exec_root / "runtime-runc" / "moby"
    if runc_root.is_dir():
        for state in runc_root.iterdir():
            subprocess.run(["runc", "--root", str(runc_root), "delete", "--force", state.name],
                           capture_output=True, timeout=30)
    # the ssh client's connection master (its title names its control socket, in our folder)
    for pid in _pids_mentioning(str(folder) + "/"):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    # whatever else still runs in the namespace (shims, docker-proxy, a forgotten sshd)
    if Path(f"/var/run/netns/{netns}").exists():
        pids = _run("ip", "netns", "pids", netns, check=False).stdout.split()
        for pid in map(int, filter(str.isdigit, pids)):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        subprocess.run(["ip", "netns", "delete", netns], capture_output=True)
    subprocess.run(["ip", "link", "delete", f"orh{tag}"], capture_output=True)
    for cgroup in Path("/sys/fs/cgroup").glob(f"*/{netns}"):   # its --cgroup-parent, empty by now
        for sub in sorted(cgroup.rglob("*"), key=lambda p: len(str(p)), reverse=True):
            if sub.is_dir():
                try:
                    sub.rmdir()
                except OSError:
                    pass
        try:
            cgroup.rmdir()
        except OSError:
            pass
    run_dir = RUN_PARENT / (PREFIX + tag)
    _unmount_under(folder, run_dir)
    for path in (folder, run_dir):
        shutil.rmtree(path, ignore_errors=True)
    if folder.exists():      # something still mounted or busy: one more pass
        _unmount_under(folder)
        shutil.rmtree(folder, ignore_errors=True)


def _wait_proc(proc: subprocess.Popen, timeout: float) -> None:
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            pass


def cleanup_leftovers() -> list[str]:
    """Remove what earlier runs that were killed left: every orch-remote-* namespace and folder
    whose owning process is gone (a run still going beside this one keeps its own)."""
    tags = set()
    if PARENT.is_dir():
        tags |= {p.name for p in PARENT.iterdir() if p.is_dir()}
    netns_dir = Path("/var/run/netns")
    if netns_dir.is_dir():
        tags |= {p.name[len(PREFIX):] for p in netns_dir.iterdir() if p.name.startswith(PREFIX)}
    if RUN_PARENT.is_dir():
        tags |= {p.name[len(PREFIX):] for p in RUN_PARENT.iterdir() if p.name.startswith(PREFIX)}
    removed = []
    for tag in sorted(tags):
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", tag):
            continue
        owner = _read_pid(PARENT / tag / "owner")
        if owner and _alive(owner):
            continue
        _teardown(tag, PARENT / tag)
        removed.append(tag)
    return removed


# -- certificates ---------------------------------------------------------------------------
# Written as PEM files: with the cryptography package when it is installed, else with the openssl
# command line (cryptography is no dependency of orchestrate).

def _have_cryptography() -> bool:
    try:
        import cryptography.x509  # noqa: F401
    except ImportError:
        return False
    return True


def make_ca(folder: Path, name: str, *, backend: str | None = None) -> tuple[Path, Path]:
    """A CA in ``folder``: (ca-key.pem, ca.pem)."""
    key, cert = folder / "ca-key.pem", folder / "ca.pem"
    if (backend or ("cryptography" if _have_cryptography() else "openssl")) == "openssl":
        _run("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", f"/CN={name}",
             "-addext", "basicConstraints=critical,CA:TRUE,pathlen:0",
             "-addext", "keyUsage=critical,digitalSignature,keyCertSign,cRLSign")
        os.chmod(key, 0o600)
        return key, cert
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    private = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    signed = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(private.public_key())
              .serial_number(x509.random_serial_number())
              .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=2))
              .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
              .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                           content_commitment=False, key_encipherment=False, data_encipherment=False,
                                           key_agreement=False, encipher_only=False, decipher_only=False),
                             critical=True)
              .add_extension(x509.SubjectKeyIdentifier.from_public_key(private.public_key()), critical=False)
              .sign(private, hashes.SHA256()))
    _write_pem(key, private)
    _write_pem(cert, signed)
    return key, cert


def make_cert(folder: Path, prefix: str, ca: tuple[Path, Path], name: str, *, server_ip: str | None = None,
              backend: str | None = None) -> tuple[Path, Path]:
    """A key and certificate signed by ``ca``: ``<prefix>key.pem`` and ``<prefix>cert.pem``; a server's
    (serverAuth, ``server_ip`` as its IP SAN) or else a client's (clientAuth)."""
    key, cert = folder / f"{prefix}key.pem", folder / f"{prefix}cert.pem"
    ca_key, ca_cert = ca
    if (backend or ("cryptography" if _have_cryptography() else "openssl")) == "openssl":
        csr, ext = folder / f"{prefix}req.csr", folder / f"{prefix}ext.cnf"
        _run("openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={name}")
        os.chmod(key, 0o600)
        lines = ["basicConstraints=critical,CA:FALSE", "keyUsage=critical,digitalSignature,keyAgreement"]
        lines += [f"subjectAltName=IP:{server_ip}", "extendedKeyUsage=serverAuth"] if server_ip else \
                 ["extendedKeyUsage=clientAuth"]
        ext.write_text("\n".join(lines) + "\n")
        _run("openssl", "x509", "-req", "-in", str(csr), "-CA", str(ca_cert), "-CAkey", str(ca_key),
             "-set_serial", str(int.from_bytes(os.urandom(8), "big")), "-days", "2", "-sha256",
             "-extfile", str(ext), "-out", str(cert))
        csr.unlink()
        ext.unlink()
        return key, cert
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
    signer = serialization.load_pem_private_key(ca_key.read_bytes(), password=None)
    issuer = x509.load_pem_x509_certificate(ca_cert.read_bytes())
    private = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
               .issuer_name(issuer.subject).public_key(private.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=2))
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()), critical=False))
    if server_ip:
        builder = (builder.add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(server_ip))]),
                                         critical=False)
                   .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False))
    else:
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    _write_pem(key, private)
    _write_pem(cert, builder.sign(signer, hashes.SHA256()))
    return key, cert


def _write_pem(path: Path, obj) -> None:
    from cryptography.hazmat.primitives import serialization
    if hasattr(obj, "private_bytes"):
        data = obj.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                 serialization.NoEncryption())
        mode = 0o600
    else:
        data = obj.public_bytes(serialization.Encoding.PEM)
        mode = 0o644
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
