"""The test nginx image (tests/images/nginx/build.sh, the stand-in for ``nginx:alpine``) behaves as
a plan uses the official one: its default command serves on 80, a conf.d file (put into the
container, no bind mount) proxies to an upstream found by name through Docker's DNS at request time
(``resolver 127.0.0.11`` and a variable in ``proxy_pass``), ``nginx -s reload`` applies a changed
file, logs go to the container's output, curl and wget health-check it, and ``docker stop``
(SIGQUIT) stops it cleanly. Everything is labelled with the test label and removed."""

from __future__ import annotations

import io
import tarfile
import time
import urllib.error
import urllib.request
import uuid

import pytest
from docker.errors import NotFound

from tests.conftest import SESSION, TEST_LABEL

pytestmark = pytest.mark.integration

LABELS = {TEST_LABEL[0]: TEST_LABEL[1]}

CONF = """\
server {{
    listen 80;
    resolver 127.0.0.11 valid=1s;
    set $upstream http://{upstream}:8000;
    location / {{
        proxy_pass $upstream;
    }}
    location = /nginx-health {{
        access_log off;
        return 200 "ok\\n";
    }}
}}
"""


def put_file(container, path: str, text: str) -> None:
    """Write a file into a container (created or running), as a plan would without a bind mount."""
    data = text.encode()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo(path.rsplit("/", 1)[1])
        info.size, info.mode, info.mtime = len(data), 0o644, int(time.time())
        tar.addfile(info, io.BytesIO(data))
    assert container.put_archive(path.rsplit("/", 1)[0], buf.getvalue())


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")
    except OSError as exc:          # not listening yet, connection reset while starting
        return 0, str(exc)


def wait_for(url: str, body: str, timeout: float = 20) -> None:
    deadline, last = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        last = get(url)
        if last == (200, body):
            return
        time.sleep(0.2)
    raise AssertionError(f"{url} never answered 200 {body!r}; last: {last}")


class Stack:
    def __init__(self, client, python_image: str, nginx_image: str):
        self.client, self.python_image, self.nginx_image = client, python_image, nginx_image
        self.prefix = f"ngx-{SESSION}-{uuid.uuid4().hex[:6]}"
        self.network = client.networks.create(f"{self.prefix}-net", driver="bridge", labels=LABELS)
        self.containers: list = []

    def upstream(self, name: str, body: str):
        """A tiny HTTP server answering ``body`` at /, reachable as ``name`` on the network."""
        c = self.client.containers.run(
            self.python_image, name=name, network=self.network.name, labels=LABELS, detach=True,
            environment={"BODY": body},
            command=["sh", "-c", 'mkdir -p /srv && printf %s "$BODY" >/srv/index.html '
                                 "&& exec python3 -m http.server 8000 -d /srv"])
        self.containers.append(c)
        return c

    def nginx(self, conf: str):
        c = self.client.containers.create(
            self.nginx_image, name=f"{self.prefix}-nginx", network=self.network.name, labels=LABELS,
            ports={"80/tcp": ("127.0.0.1", None)},
            healthcheck={"test": ["CMD", "wget", "-qO-", "http://127.0.0.1/nginx-health"],
                         "interval": 500_000_000, "timeout": 3_000_000_000, "retries": 3})
        self.containers.append(c)
        put_file(c, "/etc/nginx/conf.d/default.conf", conf)   # replaces the default site
        c.start()
        c.reload()
        port = c.attrs["NetworkSettings"]["Ports"]["80/tcp"][0]["HostPort"]
        return c, f"http://127.0.0.1:{port}"

    def remove(self) -> None:
        for c in self.containers:
            try:
                c.remove(force=True)
            except NotFound:
                pass
        self.network.remove()


@pytest.fixture
def stack(docker_client, python_image, nginx_image):
    s = Stack(docker_client, python_image, nginx_image)
    yield s
    s.remove()


def test_image_metadata_like_the_official_one(docker_client, nginx_image):
    config = docker_client.images.get(nginx_image).attrs["Config"]
    assert config["Cmd"] == ["nginx", "-g", "daemon off;"]
    assert not config.get("Entrypoint")
    assert "80/tcp" in config["ExposedPorts"]
    assert config["StopSignal"] == "SIGQUIT"
    assert config["Labels"]["org.opencontainers.image.title"] == "orchestrate-test-nginx"
    # built images are not test objects: the session cleanup must never remove them
    assert TEST_LABEL[0] not in config["Labels"]


def test_proxy_by_name_reload_and_stop(stack, docker_client):
    a, b = f"{stack.prefix}-a", f"{stack.prefix}-b"
    stack.upstream(a, "from upstream a")
    stack.upstream(b, "from upstream b")
    nginx, base = stack.nginx(CONF.format(upstream=a))

    # its default command serves the conf.d file: GET through nginx returns the upstream's body
    wait_for(f"{base}/", "from upstream a")
    assert get(f"{base}/nginx-health") == (200, "ok\n")

    # health checks: Docker's (wget, as with nginx:alpine's busybox), and curl in the container
    deadline = time.monotonic() + 20
    while (status := docker_client.api.inspect_container(nginx.id)["State"]["Health"]["Status"]) != "healthy":
        assert time.monotonic() < deadline, f"nginx never became healthy ({status})"
        time.sleep(0.2)
    code, out = nginx.exec_run(["curl", "-fsS", "http://127.0.0.1/"])
    assert (code, out.decode()) == (0, "from upstream a")

    # a changed file, checked then reloaded, takes effect with no restart
    started = nginx.attrs["State"]["StartedAt"]
    put_file(nginx, "/etc/nginx/conf.d/default.conf", CONF.format(upstream=b))
    code, out = nginx.exec_run(["nginx", "-t"])
    assert code == 0, out.decode()
    code, out = nginx.exec_run(["nginx", "-s", "reload"])
    assert code == 0, out.decode()
    wait_for(f"{base}/", "from upstream b", timeout=10)
    assert all(get(f"{base}/") == (200, "from upstream b") for _ in range(5))

    # the name is resolved at request time: a new container under the same name (a new address)
    # gets the traffic with no reload (resolver valid=1s)
    docker_client.containers.get(b).remove(force=True)
    stack.upstream(b, "from the new upstream b")
    wait_for(f"{base}/", "from the new upstream b", timeout=10)
    nginx.reload()
    assert nginx.attrs["State"]["StartedAt"] == started and nginx.attrs["RestartCount"] == 0

    # logs go to the container's output: access log on stdout, error log (notices) on stderr
    stdout = nginx.logs(stdout=True, stderr=False).decode()
    stderr = nginx.logs(stdout=False, stderr=True).decode()
    assert '"GET / HTTP/1.1" 200' in stdout
    assert "/nginx-health" not in stdout            # access_log off there (Docker's health checks)
    assert "reconfiguring" in stderr and "start worker process" in stderr

    # docker stop sends SIGQUIT: a graceful exit, well within the stop timeout
    t0 = time.monotonic()
    nginx.stop(timeout=20)
    assert time.monotonic() - t0 < 10
    nginx.reload()
    assert nginx.attrs["State"]["ExitCode"] == 0
    assert "gracefully shutting down" in nginx.logs(stdout=False, stderr=True).decode()


def test_dockerfile_from_the_image(docker_client, nginx_image):
    """What users do with nginx:alpine: a Dockerfile that COPYs a conf.d file and RUNs nginx -t
    (RUN needs /bin/sh: merged /usr's links must have survived the image's stripping)."""
    tag = f"ngx-{SESSION}-baked:{uuid.uuid4().hex[:6]}"
    files = {"Dockerfile": f"FROM {nginx_image}\nCOPY site.conf /etc/nginx/conf.d/default.conf\nRUN nginx -t\n",
             "site.conf": 'server {\n    listen 80;\n    location / { return 200 "baked\\n"; }\n}\n'}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, text in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(text.encode()), int(time.time())
            tar.addfile(info, io.BytesIO(text.encode()))
    buf.seek(0)
    image = container = None
    try:
        image, _ = docker_client.images.build(fileobj=buf, custom_context=True, tag=tag, labels=LABELS,
                                              rm=True, forcerm=True)
        container = docker_client.containers.run(tag, detach=True, labels=LABELS,
                                                  ports={"80/tcp": ("127.0.0.1", None)})
        container.reload()
        port = container.attrs["NetworkSettings"]["Ports"]["80/tcp"][0]["HostPort"]
        wait_for(f"http://127.0.0.1:{port}/", "baked\n")
    finally:
        if container is not None:
            container.remove(force=True)
        if image is not None:
            docker_client.images.remove(image.id, force=True)
