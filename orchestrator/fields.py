"""Value types shared by step specs: durations, published ports, and bounded text.

Every value that reaches Docker, PostgreSQL, a command line or the file system has a type here
with a bound, so a hostile or mistaken plan is refused at validation (with its file, line and
key) instead of reaching the Docker API or a database: names follow Docker's and PostgreSQL's
rules, text is bounded and holds no NUL, and paths stay inside the plan's root (symbolic links
followed).
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
from typing import Annotated, NamedTuple

from pydantic import AfterValidator, BeforeValidator, StringConstraints, ValidationInfo, WithJsonSchema

MAX_TEXT = 4096              # characters of a value that reaches Docker, PostgreSQL or a command
MAX_ENV_VALUE = 32 * 1024    # characters of one environment variable's value
MAX_DURATION = 3650 * 86400  # ten years, in seconds: fits Docker's nanosecond durations
NO_NUL = r"^[^\x00]*$"
DOCKER_NAME = r"^[a-zA-Z0-9][a-zA-Z0-9_.-]+$"          # Docker's rule for container and volume names
IMAGE = r"^[a-zA-Z0-9][a-zA-Z0-9_.:/@-]*$"
ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"
CONTAINER_PATH = r"^/[^\x00]*$"
PG_IDENT = r"^[A-Za-z_][A-Za-z0-9_]{0,62}$"
PATTERN_TEXT = {
    NO_NUL: "it must not contain a NUL character",
    DOCKER_NAME: "use letters, digits, '_', '.' or '-', starting with a letter or digit (at least 2 characters)",
    IMAGE: "an image is written like postgres:16-alpine or registry.example.com/team/postgres@sha256:...",
    ENV_NAME: "use letters, digits and '_', not starting with a digit",
    CONTAINER_PATH: "it must be an absolute path inside the container (starting with '/')",
    PG_IDENT: "a PostgreSQL name: letters, digits and '_', not starting with a digit, at most 63 characters",
}


def _text(max_length: int = MAX_TEXT, min_length: int | None = None, pattern: str = NO_NUL):
    return StringConstraints(min_length=min_length, max_length=max_length, pattern=pattern)


def setting_text(value: str | int | float | bool) -> str:
    """A setting as PostgreSQL reads it (``-c name=value``, ``ALTER ... SET``, CloudNativePG's
    parameters): a boolean as on/off."""
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


def _setting_value(value: str | int | float | bool) -> str | int | float | bool:
    if isinstance(value, str) and (len(value) > MAX_TEXT or "\x00" in value):
        raise ValueError(f"a setting is text of at most {MAX_TEXT} characters, without NUL")
    if isinstance(value, float) and not math.isfinite(value) or isinstance(value, int) and value.bit_length() > 63:
        raise ValueError("a setting's number must be finite and fit in 64 bits")
    return value


def _pg_bytes(value: str) -> str:
    if len(value.encode()) > 63:
        raise ValueError(f"{value!r} is {len(value.encode())} bytes: PostgreSQL names are at most 63 bytes")
    return value


Text = Annotated[str, _text()]                                    # any bounded text without NUL
NonEmptyText = Annotated[str, _text(min_length=1)]
DockerName = Annotated[str, _text(128, pattern=DOCKER_NAME)]      # a container, volume or network
Image = Annotated[str, _text(512, 1, IMAGE)]
LabelKey = Annotated[str, _text(256, 1)]
LabelValue = Annotated[str, _text()]
EnvName = Annotated[str, _text(256, 1, ENV_NAME)]
EnvValue = Annotated[str, _text(MAX_ENV_VALUE)]
Password = Annotated[str, _text(1024, 1)]
SettingName = Annotated[str, _text(128, 1)]                       # the step checks PostgreSQL's spelling
SettingValue = Annotated[str | int | float | bool, AfterValidator(_setting_value)]
PgIdent = Annotated[str, _text(pattern=PG_IDENT)]                 # a user or database name
PgName = Annotated[str, _text(63, 1), AfterValidator(_pg_bytes)]  # a table or column
ContainerPath = Annotated[str, _text(pattern=CONTAINER_PATH)]


def _inside_root(strip: str, beside: str | None):
    def check(value: str, info: ValidationInfo) -> str:
        plan = (info.context or {}).get("plan")
        path = value.removeprefix(strip)
        if beside and isinstance(info.data.get(beside), str):
            path = os.path.join(os.path.dirname(info.data[beside]), path)
        problem = plan.outside_root(path) if plan is not None else None
        if problem:
            raise ValueError(problem)
        return value
    return AfterValidator(check)


def rel_path(strip: str = "", beside: str | None = None):
    """A path of the plan's, relative to its root (or absolute): bounded, no NUL, and, when
    validated with the plan as context, inside the root. ``strip``: a URL prefix before the path
    (``sqlite:///``); ``beside``: the path is relative to the folder of that earlier field's path."""
    return Annotated[str, _text(min_length=1), _inside_root(strip, beside)]


RelPath = rel_path()
SqlitePath = rel_path(strip="sqlite:///")          # a path, or a sqlite:/// URL
ScriptLocation = rel_path(beside="alembic_ini")    # relative to the folder of alembic.ini

_DURATION = re.compile(r"^\s*(?:(\d+(?:\.\d+)?)\s*(ms|s|m|h|d))+\s*$")
_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)")
_UNIT = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(value) -> float:
    """``2s``, ``500ms``, ``1m30s``, ``7d`` or a number of seconds -> seconds (at most ten years)."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 2s, 500ms or 1m30s")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        seconds = float(value) if math.isfinite(value) and value <= MAX_DURATION else math.inf
    elif isinstance(value, str) and len(value) <= 64 and _DURATION.match(value):
        seconds = sum(float(n) * _UNIT[u] for n, u in _PART.findall(value))
    else:
        raise ValueError("expected a duration such as 2s, 500ms or 1m30s")
    if not seconds <= MAX_DURATION:
        raise ValueError("a duration of more than ten years (3650d)")
    return seconds


Duration = Annotated[float, BeforeValidator(parse_duration), WithJsonSchema({
    "anyOf": [{"type": "number", "minimum": 0, "maximum": MAX_DURATION},
              {"type": "string", "pattern": r"^(\d+(\.\d+)?(ms|s|m|h|d))+$"}],
    "description": "a duration: 500ms, 2s, 1m30s, 7d, or seconds"})]


class PortMapping(NamedTuple):
    host_ip: str
    host_port: int
    container_port: int
    proto: str

    def __str__(self) -> str:
        ip = f"[{self.host_ip}]" if ":" in self.host_ip else self.host_ip
        return f"{ip}:{self.host_port}->{self.container_port}/{self.proto}"

    @property
    def local_host(self) -> str:
        """The address a client on this machine reaches the port at (all interfaces: loopback)."""
        return {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(self.host_ip, self.host_ip)

    @property
    def local_netloc(self) -> str:
        return self.client_netloc(None)

    @property
    def loopback(self) -> bool:
        return ipaddress.ip_address(self.host_ip).is_loopback

    def client_host(self, engine_address: str | None) -> str:
        """The address a client on this machine reaches the port at: on this machine's engine
        (``engine_address`` None) loopback for all interfaces; on a remote engine its address."""
        if engine_address is None:
            return self.local_host
        return engine_address if self.host_ip in ("0.0.0.0", "::") else self.host_ip

    def client_netloc(self, engine_address: str | None) -> str:
        host = self.client_host(engine_address)
        return f"{f'[{host}]' if ':' in host else host}:{self.host_port}"


_PORT = re.compile(r"^(?:(?P<ip>\[[0-9a-fA-F:.]+\]|\d{1,3}(?:\.\d{1,3}){3}):)?(?:(?P<host>\d+):)?(?P<cont>\d+)"
                   r"(?:/(?P<proto>tcp|udp))?$")


def parse_port(value) -> PortMapping:
    """``[HOST_IP:][HOST_PORT:]CONTAINER_PORT[/PROTO]``; the host address defaults to 127.0.0.1
    (a database is not published on every interface unless the plan says so) and a lone port
    ``P`` means ``127.0.0.1:P:P``."""
    if isinstance(value, PortMapping):
        return value
    too_long = len(value) > 64 if isinstance(value, str) else isinstance(value, int) and value.bit_length() > 32
    if isinstance(value, bool) or not isinstance(value, (str, int)) or too_long:
        raise ValueError("expected a port such as \"127.0.0.1:5432:5432\" or \"5432:5432\"")
    match = _PORT.match(str(value).strip())
    host_part = re.match(r"^(?P<host>[^\[\]:]+):\d+:\d+(?:/\w+)?$", str(value).strip())
    if not match and host_part:
        raise ValueError(f"{host_part['host']!r} is not an IP address (port {value!r}): the host address "
                         f"must be an IP such as 127.0.0.1, not a host name")
    if not match:
        raise ValueError(f"malformed port {value!r}: expected [HOST_IP:]HOST_PORT:CONTAINER_PORT, "
                         "e.g. \"127.0.0.1:5432:5432\"")
    ip = (match["ip"] or "127.0.0.1").strip("[]")
    try:
        ipaddress.ip_address(ip)
    except ValueError:
        raise ValueError(f"malformed port {value!r}: {ip!r} is not an IP address") from None
    cont = int(match["cont"])
    host = int(match["host"]) if match["host"] else cont
    for port in (host, cont):
        if not 1 <= port <= 65535:
            raise ValueError(f"malformed port {value!r}: {port} is not between 1 and 65535")
    return PortMapping(ip, host, cont, match["proto"] or "tcp")


Port = Annotated[PortMapping, BeforeValidator(parse_port), WithJsonSchema({
    "anyOf": [{"type": "string", "pattern": re.sub(r"\?P<\w+>", "", _PORT.pattern)}, {"type": "integer"}],
    "description": "[HOST_IP:]HOST_PORT:CONTAINER_PORT[/PROTO]; HOST_IP defaults to 127.0.0.1"})]


def unique_ports(value: list[PortMapping]) -> list[PortMapping]:
    """A step's published ports, each host address and port at most once."""
    from .errors import KeyedValueError
    seen = set()
    for i, port in enumerate(value):
        if (port.host_ip, port.host_port, port.proto) in seen:
            raise KeyedValueError(f"host port {port.host_ip}:{port.host_port} is published twice", i)
        seen.add((port.host_ip, port.host_port, port.proto))
    return value


Ports = Annotated[list[Port], AfterValidator(unique_ports)]
