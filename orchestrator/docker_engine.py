"""The only module that talks to the Docker Engine (through docker-py).

Reads return plain inspect dictionaries (or ``None`` when the object does not exist). Every call
that changes anything goes through :meth:`Engine._mutate`, which refuses outright when the engine
was opened read-only: ``orchestrate plan``, ``status`` and ``validate`` open it so, which makes a
dry run read-only by construction, not by care. Docker's errors become :class:`DockerError` with
one clear sentence.
"""

from __future__ import annotations

import contextlib
import errno
import io
import ipaddress
import os
import re
import socket
import tarfile
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator
from urllib.parse import urlsplit

from .errors import DockerError
from .lazy import lazy
from .redact import redact

docker = lazy("docker")            # loaded when a command first talks to Docker
requests = lazy("requests")

# Seconds any one Docker API call may wait for the daemon's next bytes (docker-py's client
# timeout; ``stop`` adds its own grace period). Streams (pg_dump, pulls) send bytes throughout, so
# only a daemon that stopped answering trips it.
TIMEOUT = 120
BUILD_SILENCE = 600    # seconds a build step may run without printing a line
CPU_PERIOD = 100_000   # microseconds: a CPU limit is a quota of this period


class PortInUse(DockerError):
    pass


class ImageUnavailable(DockerError):
    pass


class BuildFailed(DockerError):
    pass


class ReadOnlyViolation(AssertionError):
    """A mutating call in a read-only run: always a bug in orchestrate."""


@dataclass
class ContainerSpec:
    """What to create, in Docker-neutral terms (the step builds it, the engine maps it)."""
    name: str
    image: str
    command: list[str] | None
    env: dict[str, str]
    labels: dict[str, str]
    ports: list[tuple[str, int, int, str]]        # (host_ip, host_port, container_port, proto)
    volumes: list[tuple[str, str]]                 # (volume name, container path)
    restart: tuple[str, int]                       # (policy name, max retries)
    healthcheck: dict[str, Any] | None = None      # test, interval, timeout, retries, start_period (ns)
    network: str | None = None
    aliases: list[str] = field(default_factory=list)
    entrypoint: list[str] | None = None
    binds: list[tuple[str, str, bool]] = field(default_factory=list)   # (host path, container path, read-only)
    read_only_volumes: set[str] = field(default_factory=set)          # container paths of read-only volumes
    user: str | None = None
    read_only: bool = False
    tmpfs: dict[str, str] = field(default_factory=dict)               # container path -> options
    memory: int | None = None                      # bytes (swap: none beyond it)
    cpus: float | None = None


def _limits(memory: int | None, cpus: float | None) -> dict[str, Any]:
    """docker-py's arguments for a memory limit (no swap beyond it) and a CPU limit, at create and update."""
    limits: dict[str, Any] = {}
    if memory:
        limits.update(mem_limit=memory, memswap_limit=memory)
    if cpus:
        limits.update(cpu_period=CPU_PERIOD, cpu_quota=int(cpus * CPU_PERIOD))
    return limits


def _no_answer(what: str) -> DockerError:
    return DockerError(f"the Docker daemon did not answer within {TIMEOUT:g}s while trying to {what}",
                       hint="check the daemon (docker info; systemctl status docker) and run again; the next "
                            "apply repairs a half-done step")


def _tls_failure(exc: BaseException) -> str | None:
    """The TLS error behind a failed connection (docker-py wraps it), if that is what it was."""
    seen = exc
    while seen is not None:
        if isinstance(seen, requests.exceptions.SSLError) or "CERTIFICATE_VERIFY_FAILED" in str(seen) \
                or "SSLError" in str(seen):
            text = str(seen)
            found = re.search(r"\[SSL[^\]]*\][^'\")]*", text)
            return redact(found.group(0).strip() if found else text)
        seen = seen.__cause__ or seen.__context__
    return None


def _load_docker(ssh: bool) -> None:
    """Import docker-py for an engine. Its transport package imports paramiko (for its ssh://
    adapter) as it loads: ~0.15 s of every command that only an ssh:// engine needs. For any other
    engine paramiko is hidden while docker-py loads (docker-py expects that ImportError: paramiko is
    its optional extra); an ssh:// engine later in the same process gets the adapter then."""
    import sys
    if "docker" not in sys.modules and not ssh and "paramiko" not in sys.modules:
        sys.modules["paramiko"] = None          # import paramiko raises ImportError meanwhile
        try:
            _ = docker.DockerClient
        finally:
            del sys.modules["paramiko"]
    if ssh:
        from docker.api import client as api_client
        if not hasattr(api_client, "SSHHTTPAdapter"):
            from docker.transport.sshconn import SSHHTTPAdapter
            api_client.SSHHTTPAdapter = SSHHTTPAdapter


def _tolerate_ended_ssh() -> None:
    """docker-py's ssh:// transport (the ssh command) writes to the ssh process when it closes a
    connection; after an exec's stream the process has often ended already, and the write raises
    BrokenPipeError (docker-py issue #3218). The connection is over either way: end it quietly."""
    from docker.transport import sshconn
    original = sshconn.SSHSocket.close
    if getattr(original, "ended_quietly", False):
        return

    def close(self):
        try:
            original(self)
        except (BrokenPipeError, ValueError, OSError):
            if self.proc is not None and self.proc.poll() is None:
                self.proc.terminate()

    close.ended_quietly = True
    sshconn.SSHSocket.close = close


def _reason(exc: Exception) -> str:
    if isinstance(exc, docker.errors.APIError):
        text = exc.explanation or str(exc)
        if isinstance(text, bytes):
            text = text.decode(errors="replace")
        return redact(str(text).strip())
    return redact(str(exc).strip())


LOCAL_SOCKET = "unix:///var/run/docker.sock"


@dataclass(frozen=True)
class Target:
    """Which Docker Engine a run talks to: the plan's ``engine:``, else ``DOCKER_HOST``,
    ``DOCKER_TLS_VERIFY`` and ``DOCKER_CERT_PATH`` as the Docker CLI reads them, else the local
    socket. ``address`` is where a client on this machine reaches the ports the engine publishes."""
    host: str | None = None                 # unix://, tcp://host:port, ssh://user@host[:port]
    ca: str | None = None                   # TLS files (PEM)
    cert: str | None = None
    key: str | None = None
    verify: bool = True
    public_host: str | None = None          # the engine's address as clients here reach it

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> "Target":
        env = os.environ if environ is None else environ
        host = env.get("DOCKER_HOST") or None
        certs = env.get("DOCKER_CERT_PATH") or os.path.expanduser("~/.docker")
        tls = env.get("DOCKER_TLS_VERIFY", "") not in ("", "0")
        if host and tls:
            return cls(host=host, ca=os.path.join(certs, "ca.pem"), cert=os.path.join(certs, "cert.pem"),
                       key=os.path.join(certs, "key.pem"))
        return cls(host=host)

    @property
    def url(self) -> str:
        return self.host or LOCAL_SOCKET

    @property
    def hostname(self) -> str | None:
        """The host part of a tcp:// or ssh:// engine address (None for a socket)."""
        parts = urlsplit(self.url.replace("tcp://", "http://", 1))
        return parts.hostname if parts.scheme in ("http", "https", "ssh") else None

    @property
    def remote(self) -> bool:
        """Whether the engine runs on another host (a port it publishes is not on this machine)."""
        host = self.hostname
        if host is None:
            return False
        try:
            return not ipaddress.ip_address(host).is_loopback
        except ValueError:
            return host != "localhost"

    @property
    def address(self) -> str | None:
        """The address a client here reaches the engine's published ports at; None: this machine."""
        if self.public_host:
            return self.public_host
        return self.hostname if self.remote else None

    def describe(self) -> str:
        return self.url if not self.remote else f"{self.url} (remote)"


class Engine:
    def __init__(self, *, read_only: bool, log: Callable[[str], None] | None = None,
                 target: Target | None = None):
        self.read_only = read_only
        self._log = log or (lambda _msg: None)
        self._client: docker.DockerClient | None = None
        self.target = target if target is not None else Target.from_env()
        self.mutations: list[str] = []
        self._local: Engine | None = None

    # -- connection --------------------------------------------------------------------------

    @property
    def client(self) -> docker.DockerClient:
        if self._client is None:
            t = self.target
            _load_docker(t.url.startswith("ssh://"))
            hint = ("start Docker (e.g. 'systemctl start docker') or point DOCKER_HOST (or the plan's "
                    "engine:) at a running engine; nothing was changed")
            try:
                tls = None
                if t.ca or t.cert:
                    for path in filter(None, (t.ca, t.cert, t.key)):
                        if not os.path.isfile(path):
                            raise DockerError(f"cannot reach the Docker daemon at {t.url}: the TLS file {path} "
                                              f"does not exist", hint="point engine.tls (or DOCKER_CERT_PATH) at the "
                                                                      "folder holding ca.pem, cert.pem and key.pem")
                    tls = docker.tls.TLSConfig(client_cert=(t.cert, t.key) if t.cert else None, ca_cert=t.ca,
                                               verify=t.ca if t.verify and t.ca else t.verify)
                ssh = t.url.startswith("ssh://")
                if ssh:
                    _tolerate_ended_ssh()
                # The API version is asked below, once requests may no longer let REQUESTS_CA_BUNDLE
                # or CURL_CA_BUNDLE replace the engine's CA (the Docker CLI ignores them too).
                client = docker.DockerClient(base_url=t.url, tls=tls or False, timeout=TIMEOUT,
                                             use_ssh_client=ssh, version=docker.constants.MINIMUM_DOCKER_API_VERSION)
                client.api.trust_env = False
                client.api._version = client.api._retrieve_server_version()
                self._client = client
            except (docker.errors.DockerException, requests.exceptions.RequestException, OSError) as exc:
                if _tls_failure(exc):
                    raise DockerError(f"the Docker daemon at {t.url} could not be trusted (TLS): {_tls_failure(exc)}",
                                      hint="check engine.tls / DOCKER_CERT_PATH: the CA must have signed the "
                                           "engine's certificate, which must name the address you use; nothing "
                                           "was changed") from None
                raise DockerError(f"cannot reach the Docker daemon at {t.url}: {self._short(exc)}",
                                  hint=hint) from None
        return self._client

    @property
    def remote(self) -> bool:
        return self.target.remote

    def local(self) -> "Engine":
        """The engine of this machine (where images are built before they are shipped to a
        remote engine); this engine itself when it is local."""
        if not self.remote:
            return self
        if self._local is None:
            env = Target.from_env()    # DOCKER_HOST may name this machine's engine (rootless, say)
            self._local = Engine(read_only=self.read_only, log=self._log,
                                 target=env if not env.remote else Target(host=LOCAL_SOCKET))
        return self._local

    @property
    def api(self) -> docker.APIClient:
        return self.client.api

    @staticmethod
    def _short(exc: Exception) -> str:
        text = str(exc)
        for needle, say in (("No such file or directory", "no Docker socket there"),
                            ("Connection refused", "connection refused"),
                            ("Permission denied", "permission denied (is your user in the docker group?)"),
                            ("timed out", f"no answer within {TIMEOUT:g}s")):
            if needle in text:
                return say
        return text

    def is_local(self) -> bool:
        """Whether published ports land on this machine (local socket, not a remote engine)."""
        return not self.remote

    @contextlib.contextmanager
    def _guard(self, what: str) -> Iterator[None]:
        """Docker's failures as one sentence: refused, no answer within TIMEOUT, connection lost."""
        try:
            yield
        except docker.errors.NotFound:
            raise
        except (docker.errors.APIError, docker.errors.DockerException) as exc:
            raise DockerError(f"Docker refused to {what}: {_reason(exc)}") from None
        except (requests.exceptions.Timeout, TimeoutError) as exc:
            raise _no_answer(what) from None
        except requests.exceptions.ConnectionError as exc:
            if "timed out" in str(exc):
                raise _no_answer(what) from None
            raise DockerError(f"lost the connection to the Docker daemon while trying to {what}: "
                              f"{self._short(exc)}") from None

    def _call(self, what: str, fn: Callable[[], Any]) -> Any:
        with self._guard(what):
            return fn()

    def _stream(self, what: str, chunks: Iterable) -> Iterator:
        """A stream from Docker whose reads are guarded like calls."""
        with self._guard(what):
            yield from chunks

    def _mutate(self, op: str) -> None:
        if self.read_only:
            raise ReadOnlyViolation(f"mutating Docker call in a read-only run: {op}")
        self.mutations.append(op)
        self._log(f"docker: {op}")

    # -- reads -------------------------------------------------------------------------------

    def _inspect(self, what: str, fn: Callable[[], Any]) -> dict | None:
        try:
            return self._call(f"inspect {what}", fn)
        except docker.errors.NotFound:
            return None

    def container(self, name_or_id: str) -> dict | None:
        return self._inspect(f"container {name_or_id}", lambda: self.api.inspect_container(name_or_id))

    def image(self, ref: str) -> dict | None:
        return self._inspect(f"image {ref}", lambda: self.api.inspect_image(ref))

    def volume(self, name: str) -> dict | None:
        return self._inspect(f"volume {name}", lambda: self.api.inspect_volume(name))

    def network(self, name: str) -> dict | None:
        return self._inspect(f"network {name}", lambda: self.api.inspect_network(name))

    def running_on_volume(self, volume: str) -> list[tuple[str, str]]:
        """(id, name) of the running containers that mount ``volume``."""
        found = self._call("list containers", lambda: self.api.containers(filters={"volume": volume}))
        return [(c["Id"], c["Names"][0].lstrip("/")) for c in found]

    def containers_labelled(self, *labels: str) -> list[dict]:
        """Summaries (``Id``, ``Names``, ``Labels``, ...) of the containers, running or not, that
        carry every label given (``key`` or ``key=value``)."""
        return self._call("list containers",
                          lambda: self.api.containers(all=True, filters={"label": list(labels)}))

    def volumes_labelled(self, *labels: str) -> list[dict]:
        """Summaries (``Name``, ``Labels``, ...) of the volumes that carry every label given."""
        return self._call("list volumes",
                          lambda: self.api.volumes(filters={"label": list(labels)}).get("Volumes") or [])

    def containers_using(self, image_id: str) -> list[str]:
        """Names of the containers, running or not, made from this image."""
        found = self._call("list containers", lambda: self.api.containers(all=True, filters={"ancestor": image_id}))
        return [c["Names"][0].lstrip("/") for c in found if c.get("ImageID") == image_id]

    def publishing(self, host_port: int) -> list[str]:
        """Names of running containers that publish ``host_port``."""
        found = self._call("list containers", lambda: self.api.containers(filters={"publish": str(host_port)}))
        return [c["Names"][0].lstrip("/") for c in found]

    def read_file(self, container_id: str, path: str) -> bytes | None:
        """A small file from a container's file system (volumes included), even when stopped."""
        try:
            stream, _stat = self._call(f"read {path}", lambda: self.api.get_archive(container_id, path))
        except docker.errors.NotFound:
            return None
        except DockerError:
            return None
        data = b"".join(self._stream(f"read {path}", stream))
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            member = tar.next()
            if member is None or not member.isfile():
                return None
            fh = tar.extractfile(member)
            return fh.read() if fh else None

    def logs(self, container_id: str, tail: int = 30) -> str:
        try:
            raw = self.api.logs(container_id, tail=tail, stdout=True, stderr=True)
        except Exception:  # logs are a courtesy in an error message; never fail on them
            return ""
        return redact(raw.decode(errors="replace"))

    @staticmethod
    def port_problem(host_ip: str, port: int) -> str | None:
        """Why ``host_ip:port`` cannot be bound on this machine right now (None: it can)."""
        family = socket.AF_INET6 if ":" in host_ip else socket.AF_INET
        ip = "" if host_ip in ("0.0.0.0", "::") else host_ip
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            # as servers (docker-proxy included) do, so TIME_WAIT leftovers do not count as taken
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((ip, port))
            except OSError as exc:
                if exc.errno == errno.EADDRNOTAVAIL:
                    return "not an address of this machine"
                return "in use"
        return None

    # -- mutations ---------------------------------------------------------------------------

    def pull(self, ref: str, progress: Callable[[str], None] | None = None) -> None:
        """Get an image this engine lacks: a remote engine is sent this machine's copy when there
        is one (no registry needed); otherwise the engine pulls it."""
        if self.remote and self.local().image(ref) is not None:
            self.ship(ref, progress)
            return
        self._mutate(f"pull image {ref}")
        with self._guard(f"pull image {ref}"):
            try:
                self.client.images.pull(ref)
            except (docker.errors.APIError, docker.errors.DockerException) as exc:
                raise ImageUnavailable(
                    f"image {ref} is not on this Docker engine and pulling it failed: {_reason(exc)}",
                    hint="build or load the image first (docker build / docker load), or check the "
                         "image name and the registry; nothing was changed") from None

    def ship(self, ref: str, progress: Callable[[str], None] | None = None) -> str:
        """Copy the local engine's image ``ref`` to this (remote) engine without a registry:
        ``docker save`` of exactly that image id streamed into ``docker load``, never held in
        memory; an image the engine already has (by id) is only tagged. Returns the image id."""
        source = self.local()
        info = source.image(ref)
        if info is None:
            raise ImageUnavailable(f"image {ref} is not on this machine's Docker engine, so it cannot be sent "
                                   f"to {self.target.url}", hint="build or load it locally first")
        image_id = info["Id"]
        if self.image(image_id) is None:
            self._mutate(f"send image {ref} ({image_id[7:19]}) to {self.target.url}")
            total, size = 0, int(info.get("Size") or 0)
            said = [0]

            def archive():
                nonlocal total
                for chunk in source._stream(f"save image {ref}", source._call(
                        f"save image {ref}", lambda: source.api.get_image(image_id))):
                    total += len(chunk)
                    if progress and total - said[0] >= 32 << 20:
                        said[0] = total
                        progress(f"sending image {ref}: {total >> 20} MiB" + (f" of ~{size >> 20} MiB" if size else ""))
                    yield chunk

            for line in self._stream(f"load image {ref}", self._call(
                    f"load image {ref}", lambda: self.api.load_image(archive()))):
                if isinstance(line, dict) and (line.get("error") or line.get("errorDetail")):
                    raise DockerError(f"{self.target.url} refused the image {ref}: "
                                      f"{redact(str(line.get('error') or line['errorDetail']))}")
            if self.image(image_id) is None:
                raise DockerError(f"sending image {ref} to {self.target.url} did not leave it there")
            self._log(f"sent image {ref}: {total >> 20} MiB")
        self.tag(image_id, ref)
        return image_id

    def build_image(self, context: str, dockerfile: str, tag: str, *, build_args: dict[str, str],
                    target: str | None, labels: dict[str, str], tail: int = 15) -> str:
        """Build with the legacy builder (docker-py sends the context as ``.dockerignore`` leaves
        it), streaming each output line to the log; returns the image id. Docker tags only a
        build that succeeded; a failed one raises :class:`BuildFailed` with its last ``tail``
        lines, and its intermediate containers are removed (``forcerm``)."""
        self._mutate(f"build image {tag}")
        last: list[str] = []
        image_id = None
        chunks = self._call(f"build image {tag}", lambda: self.api.build(
            path=context, dockerfile=dockerfile, tag=tag, buildargs=build_args, target=target,
            labels=labels, rm=True, forcerm=True, decode=True, timeout=BUILD_SILENCE))
        for chunk in self._stream(f"build image {tag}", chunks):
            if "error" in chunk or "errorDetail" in chunk:
                error = chunk.get("error") or (chunk.get("errorDetail") or {}).get("message") or "failed"
                lines = "\n".join(last[-tail:] + [redact(str(error).strip())])
                raise BuildFailed(f"building image {tag} failed; its last lines:\n{lines}")
            image_id = (chunk.get("aux") or {}).get("ID") or image_id
            for line in str(chunk.get("stream") or chunk.get("status") or "").splitlines():
                if line.strip():
                    last = (last + [redact(line.rstrip())])[-tail:]
                    self._log(f"build: {last[-1]}")
        return image_id or (self.image(tag) or {}).get("Id", "")

    def create_volume(self, name: str, labels: dict[str, str]) -> dict:
        self._mutate(f"create volume {name}")
        return self._call(f"create volume {name}",
                          lambda: self.api.create_volume(name=name, driver="local", labels=labels))

    def remove_volume(self, name: str) -> None:
        self._mutate(f"remove volume {name}")
        self._call(f"remove volume {name}", lambda: self.api.remove_volume(name))

    def create_network(self, name: str, labels: dict[str, str], *, internal: bool = False,
                       subnet: str | None = None) -> None:
        self._mutate(f"create network {name}")
        ipam = None
        if subnet:
            from docker.types import IPAMConfig, IPAMPool
            ipam = IPAMConfig(pool_configs=[IPAMPool(subnet=subnet)])
        self._call(f"create network {name}", lambda: self.api.create_network(
            name, driver="bridge", labels=labels, internal=internal, ipam=ipam))

    def remove_network(self, name: str) -> None:
        self._mutate(f"remove network {name}")
        self._call(f"remove network {name}", lambda: self.api.remove_network(name))

    def create_container(self, spec: ContainerSpec) -> str:
        self._mutate(f"create container {spec.name} from {spec.image}")
        api = self.api
        port_bindings: dict[str, list] = {}
        for host_ip, host_port, cport, proto in spec.ports:
            port_bindings.setdefault(f"{cport}/{proto}", []).append((host_ip, host_port))
        from docker.types import Healthcheck, Mount
        mounts = [Mount(target=path, source=vol, type="volume", read_only=path in spec.read_only_volumes)
                  for vol, path in spec.volumes]
        mounts += [Mount(target=path, source=src, type="bind", read_only=ro) for src, path, ro in spec.binds]
        host_config = api.create_host_config(
            port_bindings=port_bindings, mounts=mounts,
            restart_policy={"Name": spec.restart[0], "MaximumRetryCount": spec.restart[1]},
            network_mode=spec.network or "default", read_only=spec.read_only or None,
            tmpfs=dict(spec.tmpfs) or None, **_limits(spec.memory, spec.cpus),
        )
        networking = None
        if spec.network:
            networking = api.create_networking_config(
                {spec.network: api.create_endpoint_config(aliases=spec.aliases or None)})
        healthcheck = Healthcheck(**spec.healthcheck) if spec.healthcheck else None
        result = self._call(f"create container {spec.name}", lambda: api.create_container(
            image=spec.image, command=spec.command, name=spec.name, environment=spec.env,
            entrypoint=spec.entrypoint, user=spec.user or None,
            labels=spec.labels, ports=[(c, p) for _, _, c, p in spec.ports],
            host_config=host_config, healthcheck=healthcheck, networking_config=networking,
            detach=True))
        return result["Id"]

    def start(self, container_id: str, name: str) -> None:
        self._mutate(f"start container {name}")
        try:
            with self._guard(f"start container {name}"):
                self.api.start(container_id)
        except DockerError as exc:
            reason = exc.message.removeprefix(f"Docker refused to start container {name}: ")
            if "port is already allocated" in reason or "address already in use" in reason:
                raise PortInUse(reason) from None
            raise

    def stop(self, container_id: str, name: str, timeout: int = 60) -> None:
        self._mutate(f"stop container {name}")
        self._call(f"stop container {name}", lambda: self.api.stop(container_id, timeout=timeout))

    def remove_container(self, container_id: str, name: str, *, throwaway: bool = False) -> None:
        """Remove a container. Its anonymous volumes (an image's VOLUME that nothing was mounted
        on) go with it only for a ``throwaway`` one of ours (a job, a client, a drill server): a
        service container's may hold data, and are kept."""
        self._mutate(f"remove container {name}")
        try:
            self._call(f"remove container {name}",
                       lambda: self.api.remove_container(container_id, force=True, v=throwaway))
        except docker.errors.NotFound:
            pass

    def rename(self, container_id: str, new_name: str) -> None:
        self._mutate(f"rename container to {new_name}")
        self._call(f"rename container to {new_name}", lambda: self.api.rename(container_id, new_name))

    def update_restart(self, container_id: str, name: str, policy: tuple[str, int]) -> None:
        self._mutate(f"update restart policy of {name} to {policy[0]}")
        self._call(f"update container {name}", lambda: self.api.update_container(
            container_id, restart_policy={"Name": policy[0], "MaximumRetryCount": policy[1]}))

    def update_limits(self, container_id: str, name: str, memory: int | None, cpus: float | None) -> None:
        self._mutate(f"update resource limits of {name}")
        self._call(f"update container {name}",
                   lambda: self.api.update_container(container_id, **_limits(memory, cpus)))

    def disconnect(self, network: str, container_id: str, name: str) -> None:
        self._mutate(f"disconnect container {name} from network {network}")
        self._call(f"disconnect {name} from {network}",
                   lambda: self.api.disconnect_container_from_network(container_id, network, force=True))

    def wait_exit(self, container_id: str, name: str, timeout: float) -> int | None:
        """Wait until the container exits; its exit code, or None when ``timeout`` passed first."""
        try:
            result = self.api.wait(container_id, timeout=timeout)
        except (requests.exceptions.ReadTimeout, requests.exceptions.ConnectionError) as exc:
            if isinstance(exc, requests.exceptions.ReadTimeout) or "timed out" in str(exc):
                return None
            raise DockerError(f"lost the connection to the Docker daemon while waiting for {name}: "
                              f"{self._short(exc)}") from None
        except docker.errors.APIError as exc:
            raise DockerError(f"Docker refused to wait for container {name}: {_reason(exc)}") from None
        return int(result.get("StatusCode", -1))

    def tag(self, image_id: str, ref: str) -> None:
        """Make ``ref`` (name:tag) name the image ``image_id``."""
        self._mutate(f"tag {image_id[7:19]} as {ref}")
        repo, _, tag = ref.rpartition(":") if ":" in ref.rsplit("/", 1)[-1] else (ref, "", "latest")
        self._call(f"tag {ref}", lambda: self.api.tag(image_id, repo, tag, force=True))

    def remove_image(self, ref: str) -> None:
        self._mutate(f"remove image {ref}")
        try:
            self._call(f"remove image {ref}", lambda: self.api.remove_image(ref, noprune=False))
        except docker.errors.NotFound:
            pass

    def connect(self, network: str, container_id: str, name: str, aliases: list[str]) -> None:
        self._mutate(f"connect container {name} to network {network}")
        self._call(f"connect {name} to {network}",
                   lambda: self.api.connect_container_to_network(container_id, network,
                                                                 aliases=aliases or None))

    def exec_stream(self, container_id: str, name: str, cmd: list[str], env: dict[str, str] | None = None):
        """Run a command inside a container, streaming: returns an iterator of (stdout, stderr)
        chunks and a function giving the exit code once the iterator is exhausted."""
        self._mutate(f"exec in {name}: {cmd[0]}")
        exec_id = self._call(f"run a command in {name}", lambda: self.api.exec_create(
            container_id, cmd, environment=env, stdout=True, stderr=True)["Id"])
        what = f"run a command in {name}"
        chunks = self._call(what, lambda: self.api.exec_start(exec_id, stream=True, demux=True))
        return self._stream(what, chunks), lambda: self._call(what, lambda: self.api.exec_inspect(exec_id)["ExitCode"])

    def put_file(self, container_id: str, name: str, directory: str, path, chunk: int = 1 << 20) -> None:
        """Copy a host file into a directory of a container, streamed as a tar archive built on
        the fly (never held in memory)."""
        import os
        self._mutate(f"copy {os.path.basename(path)} into {name}:{directory}")
        size = os.path.getsize(path)
        info = tarfile.TarInfo(os.path.basename(path))
        info.size, info.mode = size, 0o644

        def archive():
            yield info.tobuf(format=tarfile.GNU_FORMAT)
            with open(path, "rb") as fh:
                while block := fh.read(chunk):
                    yield block
            yield b"\0" * ((512 - size % 512) % 512) + b"\0" * 1024

        self._call(f"copy a file into {name}", lambda: self.api.put_archive(container_id, directory, archive()))

    def put_bytes(self, container_id: str, name: str, dest: str, data: bytes, mode: int = 0o644) -> None:
        """Write ``data`` as the file ``dest`` (an absolute path) in a container, created, stopped or
        running; folders that do not exist are created (0755), existing ones are left as they are."""
        import posixpath
        self._mutate(f"copy {dest} into {name}")
        folder, missing = posixpath.dirname(dest) or "/", []
        while True:
            buf = io.BytesIO()
            with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
                for i in range(len(missing)):
                    info = tarfile.TarInfo("/".join(missing[:i + 1]))
                    info.type, info.mode = tarfile.DIRTYPE, 0o755
                    tar.addfile(info)
                info = tarfile.TarInfo("/".join([*missing, posixpath.basename(dest)]))
                info.size, info.mode = len(data), mode
                tar.addfile(info, io.BytesIO(data))
            try:
                self._call(f"copy {dest} into {name}",
                           lambda: self.api.put_archive(container_id, folder, buf.getvalue()))
                return
            except docker.errors.NotFound:
                if folder == "/":
                    raise DockerError(f"cannot copy {dest} into {name}: the container does not exist") from None
                folder, missing = posixpath.dirname(folder) or "/", [posixpath.basename(folder), *missing]

    def exec(self, container_id: str, name: str, cmd: list[str], env: dict[str, str] | None = None,
             user: str = "") -> tuple[int, str]:
        """Run a command inside a container; secrets go in ``env``, never in ``cmd``."""
        self._mutate(f"exec in {name}: {cmd[0]}")

        def run():
            exec_id = self.api.exec_create(container_id, cmd, environment=env, user=user,
                                           stdout=True, stderr=True)["Id"]
            output = self.api.exec_start(exec_id)
            code = self.api.exec_inspect(exec_id)["ExitCode"]
            return code, redact(output.decode(errors="replace"))

        return self._call(f"run a command in {name}", run)

    def follow_logs(self, container_id: str, tail: int | str = "all") -> Iterator[bytes]:
        """A container's output (stdout and stderr) as it comes, until it exits (a read: jobs
        stream it to the log). Raises when the daemon sends nothing for ``TIMEOUT`` seconds."""
        return self._stream(f"read the output of {container_id[:12]}", self._call(
            f"read the output of {container_id[:12]}",
            lambda: self.api.logs(container_id, stream=True, follow=True, stdout=True, stderr=True, tail=tail)))

    # -- swarm: services, secrets, configs (issue 14) ------------------------------------------
    # Service specs are Docker's own API dictionaries (ServiceSpec), built by the service step.

    def swarm_active(self) -> bool:
        """Whether this engine is a swarm manager (services can be created here)."""
        info = self._call("read the engine's swarm state", lambda: self.api.info())
        swarm = info.get("Swarm") or {}
        return swarm.get("LocalNodeState") == "active" and bool(swarm.get("ControlAvailable"))

    def service(self, name_or_id: str) -> dict | None:
        return self._inspect(f"service {name_or_id}", lambda: self.api.inspect_service(name_or_id))

    def service_tasks(self, service_id: str) -> list[dict]:
        return self._call(f"list the tasks of service {service_id[:12]}",
                          lambda: self.api.tasks(filters={"service": service_id}))

    def services_labelled(self, *labels: str) -> list[dict]:
        return self._call("list services", lambda: self.api.services(filters={"label": list(labels)}))

    def secrets_labelled(self, *labels: str) -> list[dict]:
        return self._call("list secrets", lambda: self.api.secrets(filters={"label": list(labels)}))

    def configs_labelled(self, *labels: str) -> list[dict]:
        return self._call("list configs", lambda: self.api.configs(filters={"label": list(labels)}))

    def create_secret(self, name: str, data: bytes, labels: dict[str, str]) -> str:
        """A Swarm secret (immutable); the value goes only to the daemon, never to the log."""
        self._mutate(f"create secret {name}")
        return self._call(f"create secret {name}",
                          lambda: self.api.create_secret(name, data, labels=labels))["ID"]

    def remove_secret(self, name_or_id: str) -> None:
        self._mutate(f"remove secret {name_or_id}")
        self._call(f"remove secret {name_or_id}", lambda: self.api.remove_secret(name_or_id))

    def create_config(self, name: str, data: bytes, labels: dict[str, str]) -> str:
        self._mutate(f"create config {name}")
        return self._call(f"create config {name}",
                          lambda: self.api.create_config(name, data, labels=labels))["ID"]

    def remove_config(self, name_or_id: str) -> None:
        self._mutate(f"remove config {name_or_id}")
        self._call(f"remove config {name_or_id}", lambda: self.api.remove_config(name_or_id))

    @staticmethod
    def _service_args(spec: dict) -> dict[str, Any]:
        return {"task_template": spec["TaskTemplate"], "name": spec["Name"], "labels": spec.get("Labels"),
                "mode": spec.get("Mode"), "update_config": spec.get("UpdateConfig"),
                "rollback_config": spec.get("RollbackConfig"), "endpoint_spec": spec.get("EndpointSpec")}

    def create_service(self, spec: dict) -> str:
        self._mutate(f"create service {spec['Name']}")
        return self._call(f"create service {spec['Name']}",
                          lambda: self.api.create_service(**self._service_args(spec)))["ID"]

    def update_service(self, service_id: str, version: int, spec: dict) -> None:
        """Replace a service's spec (Docker rolls its tasks by the spec's UpdateConfig)."""
        self._mutate(f"update service {spec['Name']}")
        self._call(f"update service {spec['Name']}", lambda: self.api.update_service(
            service_id, version, fetch_current_spec=False, **self._service_args(spec)))

    def remove_service(self, name_or_id: str) -> None:
        self._mutate(f"remove service {name_or_id}")
        self._call(f"remove service {name_or_id}", lambda: self.api.remove_service(name_or_id))

    def create_overlay_network(self, name: str, labels: dict[str, str], *, internal: bool = False,
                               subnet: str | None = None, attachable: bool = True) -> None:
        """An overlay network (swarm mode); attachable lets plain containers (a migrate job) join it."""
        self._mutate(f"create network {name}")
        ipam = None
        if subnet:
            from docker.types import IPAMConfig, IPAMPool
            ipam = IPAMConfig(pool_configs=[IPAMPool(subnet=subnet)])
        self._call(f"create network {name}", lambda: self.api.create_network(
            name, driver="overlay", labels=labels, internal=internal, ipam=ipam, attachable=attachable))
