import pytest

from orchestrator.fields import PortMapping, parse_duration, parse_port


@pytest.mark.parametrize("text,expected", [
    ("127.0.0.1:5432:5432", PortMapping("127.0.0.1", 5432, 5432, "tcp")),
    ("5433:5432", PortMapping("127.0.0.1", 5433, 5432, "tcp")),          # loopback by default
    ("5432", PortMapping("127.0.0.1", 5432, 5432, "tcp")),
    (5432, PortMapping("127.0.0.1", 5432, 5432, "tcp")),
    ("0.0.0.0:5432:5432", PortMapping("0.0.0.0", 5432, 5432, "tcp")),
    ("[::1]:5432:5432/tcp", PortMapping("::1", 5432, 5432, "tcp")),
    ("10.1.2.3:6000:5432/udp", PortMapping("10.1.2.3", 6000, 5432, "udp")),
])
def test_ports(text, expected):
    assert parse_port(text) == expected


@pytest.mark.parametrize("text,words", [
    ("abc:5432", "malformed port"), ("127.0.0.1:99999:5432", "not between 1 and 65535"),
    ("999.1.1.1:5432:5432", "not an IP address"), ("5432:5432:5432:1", "malformed"), (True, "expected a port"),
    ("0:5432", "not between 1 and 65535"),
])
def test_bad_ports(text, words):
    with pytest.raises(ValueError, match=words):
        parse_port(text)


@pytest.mark.parametrize("text,seconds", [("2s", 2), ("500ms", 0.5), ("1m30s", 90), ("7d", 604800), (3, 3), ("1h", 3600)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["soon", "2", "-1", "1x", "", True])
def test_bad_durations(text):
    with pytest.raises(ValueError):
        parse_duration(int(text) if text == "-1" else text)
