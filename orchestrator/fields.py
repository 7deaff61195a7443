"""Value types shared by step specs: durations and published ports."""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, NamedTuple

from pydantic import BeforeValidator, WithJsonSchema

_DURATION = re.compile(r"^\s*(?:(\d+(?:\.\d+)?)\s*(ms|s|m|h|d))+\s*$")
_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)")
_UNIT = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(value) -> float:
    """``2s``, ``500ms``, ``1m30s``, ``7d`` or a number of seconds -> seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 2s, 500ms or 1m30s")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return float(value)
    if isinstance(value, str) and _DURATION.match(value):
        return sum(float(n) * _UNIT[u] for n, u in _PART.findall(value))
    raise ValueError("expected a duration such as 2s, 500ms or 1m30s")


Duration = Annotated[float, BeforeValidator(parse_duration), WithJsonSchema({
    "anyOf": [{"type": "number", "minimum": 0},
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


_PORT = re.compile(r"^(?:(?P<ip>\[[0-9a-fA-F:.]+\]|\d{1,3}(?:\.\d{1,3}){3}):)?(?:(?P<host>\d+):)?(?P<cont>\d+)"
                   r"(?:/(?P<proto>tcp|udp))?$")


def parse_port(value) -> PortMapping:
    """``[HOST_IP:][HOST_PORT:]CONTAINER_PORT[/PROTO]``; the host address defaults to 127.0.0.1
    (a database is not published on every interface unless the plan says so) and a lone port
    ``P`` means ``127.0.0.1:P:P``."""
    if isinstance(value, PortMapping):
        return value
    if isinstance(value, bool) or not isinstance(value, (str, int)):
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
