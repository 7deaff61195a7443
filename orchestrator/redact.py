"""Secret redaction: every byte orchestrate prints or writes passes through :func:`redact`.

Secrets are registered as soon as they are resolved (see :mod:`orchestrator.secrets`). Redacting
the known values everywhere, rather than trusting each code path to leave them out, means a
password that leaks into a Docker log line, a database error or a URL is still masked. The
URL-encoded form of each secret is masked too, since secrets end up inside connection URLs.
"""

from __future__ import annotations

from urllib.parse import quote

REDACTED = "(redacted)"

_secrets: set[str] = set()


def register(value: str) -> None:
    """Remember ``value`` as a secret (values shorter than 4 characters are too common to mask)."""
    if value and len(value) >= 4:
        _secrets.add(value)
        encoded = quote(value, safe="")
        if encoded != value:
            _secrets.add(encoded)


def redact(text: str, replacement: str = REDACTED) -> str:
    """Return ``text`` with every registered secret replaced by ``(redacted)`` (or ``replacement``)."""
    if not _secrets or not text:
        return text
    # Longest first, so a secret that contains another is masked whole.
    for secret in sorted(_secrets, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, replacement)
    return text


def found(text: str) -> set[str]:
    """The registered secrets (in either form) that occur in ``text``."""
    return {secret for secret in _secrets if secret in text}


def redact_obj(obj):
    """Redact every string inside a JSON-like structure."""
    if isinstance(obj, str):
        return redact(obj)
    if isinstance(obj, dict):
        return {redact_obj(k): redact_obj(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [redact_obj(v) for v in obj]
    return obj


def clear() -> None:
    """Forget all secrets (tests run many plans in one process)."""
    _secrets.clear()
