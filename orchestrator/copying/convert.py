"""Values from SQLite, converted for the *target* column's PostgreSQL type, and their canonical
text (for checksums computed the same way in Python and in the server).

SQLite stores whatever it was given: booleans as 0/1 or words, timestamps as text or epoch
numbers, numbers as text. Each target column gets one converter, built once from its type, with
the common case first; anything it cannot convert without loss raises :class:`ConvertError`
with a reason, never a silent truncation.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import struct
import uuid
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from json.encoder import encode_basestring
from typing import Any, Callable
from zoneinfo import ZoneInfo

NULL = "\\N"
SEP = "\x1f"             # before each column's canonical text in a row's (row_text)
NULL_FIELD = "\x1d"      # a NULL column's, in its place
ROW_SEP = "\x1e"         # between rows, where rows are digested in key order
MARKS = SEP + NULL_FIELD   # a row's text holds one per column, unless a value holds one too


class ConvertError(ValueError):
    """A value that cannot become the target type; the message says why."""


@dataclass(frozen=True)
class TargetColumn:
    name: str
    type: str                 # format_type(): 'integer', 'character varying(10)', 'timestamp with time zone'
    base: str                 # pg_type.typname: int4, varchar, timestamptz, ...
    length: int | None = None         # varchar(n) / char(n)
    precision: int | None = None      # numeric(p, s)
    scale: int | None = None
    not_null: bool = False
    has_default: bool = False
    sequence: str | None = None       # serial / identity sequence
    identity: str = ""                # 'a': GENERATED ALWAYS, 'd': BY DEFAULT, '': none
    generated: bool = False           # GENERATED ALWAYS AS (...) STORED: the server computes it

    @property
    def kind(self) -> str:
        return KIND.get(self.base, "text" if self.base in ("text", "varchar", "bpchar", "name", "citext") else "other")


def source_value_sql(col: TargetColumn, ident: str) -> str:
    """How a source column is read for ``col``: as SQLite stores it, except a 16-byte BLOB for a
    uuid column, a UUID's own bytes (as Rust's sqlx and sqlalchemy-utils' binary UUIDType store
    it), read as its 32 hex digits. SQLite's text arrives as bytes too (``text_factory``), so
    only SQLite can tell a blob from text: a 16-character text is no UUID, and stays refused."""
    if col.kind == "uuid":
        return f"CASE WHEN typeof({ident}) = 'blob' AND length({ident}) = 16 THEN hex({ident}) ELSE {ident} END"
    return ident


KIND = {"bool": "bool", "int2": "int", "int4": "int", "int8": "int", "numeric": "numeric",
        "float4": "float", "float8": "float", "timestamptz": "timestamptz", "timestamp": "timestamp",
        "date": "date", "time": "time", "json": "json", "jsonb": "jsonb", "bytea": "bytea", "uuid": "uuid",
        "interval": "interval"}
INT_RANGE = {"int2": (-2**15, 2**15 - 1), "int4": (-2**31, 2**31 - 1), "int8": (-2**63, 2**63 - 1)}
# exactly what PostgreSQL's boolean input reads (case aside, after surrounding spaces):
# every unique prefix of true/false/yes/no, on/off (two letters at least), 1/0
TRUE = {"true"[:n] for n in range(1, 5)} | {"yes"[:n] for n in range(1, 4)} | {"on", "1"}
FALSE = {"false"[:n] for n in range(1, 6)} | {"no"[:n] for n in range(1, 3)} | {"of", "off", "0"}
BOOL_WORDS = TRUE | FALSE
C_SPACE = " \t\n\r\f\v"          # what PostgreSQL strips around input (C's isspace)
INT_TEXT = re.compile(r"^\s*[+-]?\d+\s*$")
EPOCH_TEXT = re.compile(r"^\s*[+-]?\d+(\.\d+)?\s*$")
DATETIME_SHAPED = re.compile(r"^\d{4}-\d\d-\d\d[ T]\d\d:\d\d")
FLOAT_WORDS = {"nan": math.nan, "infinity": math.inf, "+infinity": math.inf, "-infinity": -math.inf,
               "inf": math.inf, "+inf": math.inf, "-inf": -math.inf}


def show_value(value: Any, width: int = 60) -> str:
    """A value as a user would write it in SQL: text quoted, numbers bare, bytes as their text
    when they are UTF-8 (SQLite hands text over as bytes to the checks)."""
    if isinstance(value, bytes):
        text = "'" + value.decode("utf-8", "backslashreplace").replace("'", "''") + "'"
    else:
        text = repr(value)
    return text if len(text) <= width else text[:width - 3] + "..."


def _text(value: Any) -> str:
    """SQLite text arrives as bytes (so invalid UTF-8 is ours to report, per row)."""
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ConvertError(f"invalid UTF-8 at byte {exc.start}: {show_value(value[max(0, exc.start - 10):exc.start + 10])}") from None
    return value if isinstance(value, str) else str(value)


def has_nul(value: Any) -> bool:
    """Text (as str or as SQLite's bytes) holding a NUL, which PostgreSQL's text cannot."""
    return isinstance(value, (str, bytes)) and ("\x00" if isinstance(value, str) else b"\x00") in value


def make_converter(col: TargetColumn, *, tz: ZoneInfo, strip_nul: bool = False,
                   server_version: int = 140000) -> Callable[[Any], Any]:
    """One function value -> value for the column (None passes through; NOT NULL is the
    caller's to check, so the message can name the row). ``server_version`` decides what the
    server can hold (numeric Infinity from PostgreSQL 14 on)."""
    kind = col.kind
    if kind == "int":
        lo, hi = INT_RANGE[col.base]

        def conv(v):
            if type(v) is int:
                if lo <= v <= hi:
                    return v
                raise ConvertError(f"{v} is out of range for {col.type}")
            if isinstance(v, float) and v.is_integer():
                return conv(int(v))
            if isinstance(v, (str, bytes)):
                s = _text(v)
                if INT_TEXT.match(s):
                    return conv(int(s))
            raise ConvertError(f"{show_value(v)} is not an integer")
        return conv
    if kind == "bool":
        def conv(v):
            if v == 1 or v == 0:
                if isinstance(v, (int, float)):
                    return bool(v)
            if isinstance(v, (str, bytes)):
                s = _text(v).strip(C_SPACE).lower()
                if s in TRUE:
                    return True
                if s in FALSE:
                    return False
            raise ConvertError(f"{show_value(v)} is not a boolean (0/1, true/false, yes/no, on/off or their prefixes)")
        return conv
    if kind == "float":
        single = col.base == "float4"

        def conv(v):
            if isinstance(v, (str, bytes)):
                s = _text(v).strip()
                word = FLOAT_WORDS.get(s.lower())
                if word is not None:
                    return word
                try:
                    v = float(s)
                except ValueError:
                    raise ConvertError(f"{show_value(s)} is not a number") from None
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                v = float(v)
                if single and math.isfinite(v) and abs(v) > 3.4028234663852886e38:
                    raise ConvertError(f"{v!r} is out of range for real")
                return v
            raise ConvertError(f"{show_value(v)} is not a number")
        return conv
    if kind == "numeric":
        def conv(v):
            try:
                d = Decimal(_text(v).strip()) if isinstance(v, (str, bytes)) else Decimal(repr(v) if isinstance(v, float) else v)
            except (InvalidOperation, TypeError):
                raise ConvertError(f"{show_value(v)} is not a number") from None
            if d.is_nan():
                return d
            if d.is_infinite():
                if server_version >= 140000 and col.precision is None:
                    return d
                why = "before PostgreSQL 14" if server_version < 140000 else "with a declared precision"
                raise ConvertError(f"{show_value(v)} is infinite, which {col.type} cannot hold ({why})")
            if col.precision is not None:
                scale = col.scale or 0
                d = d.quantize(Decimal(1).scaleb(-scale), rounding=ROUND_HALF_UP)   # as PostgreSQL rounds
                if d.adjusted() >= col.precision - scale:
                    raise ConvertError(f"{show_value(v)} is out of range for {col.type}")
            return d
        return conv
    if kind in ("timestamptz", "timestamp"):
        aware = kind == "timestamptz"

        def conv(v):
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                moment = _from_epoch(v)
            else:
                s = _text(v).strip()
                if EPOCH_TEXT.match(s) and len(s.split(".")[0].lstrip("+-")) > 8:
                    moment = _from_epoch(float(s))
                else:
                    moment = _parse_datetime(s)
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=tz)
            return moment if aware else moment.astimezone(tz).replace(tzinfo=None)
        return conv
    if kind == "date":
        def conv(v):
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                return _from_epoch(v).astimezone(tz).date()
            s = _text(v).strip()
            try:
                return date.fromisoformat(s)
            except ValueError:
                pass
            moment = _parse_datetime(s)
            if moment.time() != time(0) or moment.tzinfo is not None:
                raise ConvertError(f"{show_value(s)} has a time of day, which a date column would drop")
            return moment.date()
        return conv
    if kind == "time":
        def conv(v):
            s = _text(v).strip()
            try:
                return time.fromisoformat(s)
            except ValueError as exc:
                raise ConvertError(f"{show_value(s)} is not a time ({exc})") from None
        return conv
    if kind == "interval":
        def conv(v):
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                raise ConvertError(f"{show_value(v)} is a number, and a duration's unit is not known (PostgreSQL "
                                   f"reads seconds, Django stores microseconds)")
            s = _text(v).strip()
            if not DATETIME_SHAPED.match(s):
                return s                   # PostgreSQL reads it: '1 day 02:00:00', '00:05:00', 'P1DT2H'
            moment = _parse_datetime(s)    # SQLAlchemy's Interval without a native type: 1970-01-01 + it
            epoch = datetime(1970, 1, 1, tzinfo=moment.tzinfo and timezone.utc)
            return interval_text(moment - epoch)
        return conv
    if kind in ("json", "jsonb"):
        def conv(v):
            s = _text(v)
            try:
                _STRICT_JSON.decode(s)
            except (ValueError, TypeError) as exc:
                raise ConvertError(f"invalid JSON ({exc}): {show_value(s)}") from None
            if kind == "jsonb" and "\\u0000" in s:
                raise ConvertError("JSON with \\u0000, which jsonb cannot store")
            return s
        return conv
    if kind == "bytea":
        def conv(v):
            if isinstance(v, bytes):
                return v
            if isinstance(v, str):
                return v.encode("utf-8")
            raise ConvertError(f"{show_value(v)} is not binary data")
        return conv
    if kind == "uuid":
        def conv(v):
            try:
                return str(uuid.UUID(_text(v).strip()))
            except ValueError:
                raise ConvertError(f"{show_value(v)} is not a UUID") from None
        return conv
    # text, varchar(n), char(n) and anything else PostgreSQL parses from text
    limit = col.length

    def conv(v):
        if isinstance(v, bytes):
            s = _text(v)
        elif isinstance(v, str):
            s = v
        elif isinstance(v, float):
            s = repr(v)
        else:
            s = str(v)
        if "\x00" in s:
            if not strip_nul:
                raise ConvertError("text contains NUL bytes, which PostgreSQL refuses (strip_nul: true drops them)")
            s = s.replace("\x00", "")
        if limit is not None and len(s) > limit:
            raise ConvertError(f"a value of {len(s)} characters is longer than {col.type}")
        return s
    return conv


def _reject_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


# Built once: json.loads with any keyword builds a new decoder on every call (twice the time).
_STRICT_JSON = json.JSONDecoder(parse_constant=_reject_constant)
_DECIMAL_JSON = json.JSONDecoder(parse_float=Decimal)


def _from_epoch(seconds: float) -> datetime:
    try:
        return datetime(1970, 1, 1, tzinfo=timezone.utc) + timedelta(seconds=seconds)
    except (OverflowError, ValueError):
        raise ConvertError(f"{seconds!r} is out of range as a Unix time") from None


def _parse_datetime(s: str) -> datetime:
    try:
        return datetime.fromisoformat(s.replace("Z", "+00:00") if s.endswith("Z") else s)
    except ValueError as exc:
        raise ConvertError(f"{show_value(s)} is not a timestamp ({exc})") from None


# --- canonical text, for checksums ----------------------------------------------------------

# Times and dates are the server's own output in the ISO DateStyle (the copy's stable output
# settings, STABLE_OUTPUT): 'YYYY-MM-DD HH:MM:SS', then a fraction of a second only when there is
# one, without trailing zeros. to_char() with a fixed layout cost ~0.55 s more per million values.
CANONICAL_SQL = {
    "bool": "CASE WHEN {c} THEN 't' ELSE 'f' END",
    "timestamptz": "({c} AT TIME ZONE 'UTC')::text",
    "timestamp": "{c}::text",
    "date": "{c}::text",
    "time": "to_char({c}::interval, 'HH24:MI:SS.US')",
    "bytea": "encode({c}, 'hex')",
    "float": "{c}::float8::text",
}


def canonical_sql(col: TargetColumn, ident: str) -> str:
    """SQL giving the canonical text of a column, the same as :func:`canonical` gives (NULL for
    NULL), in a session with the ISO DateStyle (every server's default; verify sets it)."""
    return CANONICAL_SQL.get(col.kind, "{c}::text").format(c=ident)


def row_hash_sql(cols: list[TargetColumn], idents: list[str], server_version: int) -> str:
    """A 64-bit hash of a row's values, computed in the server: ``hash_record_extended`` over
    the values themselves (no text formatting; types without a hash function, such as json, are
    hashed as text), or the row's text on PostgreSQL before 14."""
    if server_version >= 140000:
        values = ", ".join(i if c.kind not in ("json", "other") else f"{i}::text" for c, i in zip(cols, idents))
        return f"hash_record_extended(ROW({values}), 0)"
    return f"hashtextextended(ROW({', '.join(idents)})::text, 0)"


def row_text_sql(cols: list[TargetColumn], idents: list[str], *, exact: bool = False) -> str:
    """SQL giving a row's canonical text: per column, :data:`SEP` and its canonical text, or
    :data:`NULL_FIELD` for a NULL (:func:`row_text`). ``exact``: a NULL boolean too (without it,
    it reads 'f', kept so for the checksums the copy records)."""
    def one(c: TargetColumn, i: str) -> str:
        if exact and c.kind == "bool":
            return f"coalesce(chr(31) || CASE WHEN {i} THEN 't' WHEN NOT {i} THEN 'f' END, chr(29))"
        return f"coalesce(chr(31) || {canonical_sql(c, i)}, chr(29))"
    return " || ".join(one(c, i) for c, i in zip(cols, idents)) or "''"


def separated_sql(cols: list[TargetColumn], idents: list[str]) -> str:
    """SQL true when a value of the row holds one of :data:`MARKS` (only free text can: text,
    and the types read from text), false when none can.

    Looking on one side is enough. Where the target's values hold no mark, its text reads back
    into its rows one way only, and a source text equal to it holds as many marks (one per
    column and row), so none in its values either. The row separator needs no test: with the
    number of columns fixed and the rows counted on both sides, the marks place each row's end."""
    conds = [f"strpos({canonical_sql(c, i)}, chr({ord(mark)})) > 0" for c, i in zip(cols, idents)
             if c.kind in ("text", "other") for mark in MARKS]
    return " OR ".join(conds) or "false"


def checksum_sql(cols: list[TargetColumn], idents: list[str], table: str, where: str = "", *,
                 exact: bool = False) -> str:
    """count(*), the sum of the first 64 bits of md5 over each row's canonical text
    (:func:`row_text_sql`), and whether a value holds a separator (:func:`separated_sql`)."""
    row = row_text_sql(cols, idents, exact=exact)
    return (f"SELECT count(*), coalesce(sum(('x' || substr(md5({row}), 1, 16))::bit(64)::bigint), 0), "
            f"coalesce(bool_or({separated_sql(cols, idents)}), false) FROM {table}{where}")


def canonical(col: TargetColumn) -> Callable[[Any], str]:
    """Python side of :func:`canonical_sql`, over converted values."""
    kind = col.kind
    if kind == "bool":
        return lambda v: NULL if v is None else ("t" if v else "f")
    if kind == "int":
        return lambda v: NULL if v is None else str(v)
    if kind == "float":
        single = col.base == "float4"

        def f(v):
            if v is None:
                return NULL
            if single and math.isfinite(v):
                v = struct.unpack("f", struct.pack("f", v))[0]
            return float_text(v)
        return f
    if kind == "numeric":
        return lambda v: NULL if v is None else ("NaN" if v.is_nan() else format(v, "f"))
    if kind == "timestamptz":
        return lambda v: NULL if v is None else iso_text(v.astimezone(timezone.utc).replace(tzinfo=None))
    if kind == "timestamp":
        return lambda v: NULL if v is None else iso_text(v)
    if kind == "date":
        return lambda v: NULL if v is None else v.isoformat()
    if kind == "time":
        return lambda v: NULL if v is None else v.strftime("%H:%M:%S.%f")
    if kind == "bytea":
        return lambda v: NULL if v is None else v.hex()
    if kind == "jsonb":
        return lambda v: NULL if v is None else jsonb_text(_DECIMAL_JSON.decode(v))
    return lambda v: NULL if v is None else v


def interval_text(span: timedelta) -> str:
    """PostgreSQL's text of an interval of days and a time (IntervalStyle postgres), which it
    also reads back as the same days and time: '00:05:00', '1 day 01:00:00', '3 days',
    '-1 days +23:55:00', '00:00:00.5'."""
    days, rest = span.days, span.seconds
    clock = f"{rest // 3600:02d}:{rest // 60 % 60:02d}:{rest % 60:02d}"
    if span.microseconds:
        clock += f".{span.microseconds:06d}".rstrip("0")
    if not days:
        return clock
    day = f"{days} day{'' if days == 1 else 's'}"
    return day if not rest and not span.microseconds else f"{day} {'+' if days < 0 else ''}{clock}"


def iso_text(moment: datetime) -> str:
    """PostgreSQL's text of a timestamp without time zone in the ISO DateStyle: the fraction of a
    second only when there is one, without its trailing zeros."""
    text = moment.isoformat(" ")
    return text.rstrip("0") if moment.microsecond else text


def float_text(v: float) -> str:
    """PostgreSQL's float8 output (shortest round trip, as Python's repr)."""
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "Infinity" if v > 0 else "-Infinity"
    text = repr(v)
    if "e" in text:
        mantissa, exp = text.split("e")
        mantissa = mantissa[:-2] if mantissa.endswith(".0") else mantissa
        sign = "-" if exp.startswith("-") else "+"
        return f"{mantissa}e{sign}{exp.lstrip('+-').zfill(2)}"
    return text[:-2] if text.endswith(".0") else text


def jsonb_text(value: Any) -> str:
    """The text PostgreSQL prints for a jsonb value: keys by length then bytes, ', ' and ': '."""
    kind = type(value)
    if kind is str:         # what json's decoders make, most frequent first
        return _json_string(value)
    if kind is dict:
        return "{" + ", ".join([f"{_json_string(k)}: {jsonb_text(value[k])}" for k in _jsonb_keys(value)]) + "}"
    if kind is list:
        return "[" + ", ".join([jsonb_text(v) for v in value]) + "]"
    if kind is int:
        return str(value)
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, Decimal):
        text = format(value, "f")
        return "0" if text in ("-0",) else text
    if isinstance(value, float):
        return float_text(value)
    raise TypeError(type(value))


def _jsonb_keys(obj: dict) -> list[str]:
    """An object's keys in jsonb's order: by length in bytes, then by bytes. ASCII keys (the
    usual) sort that way as strings, by length; UTF-8 keeps the code points' order."""
    keys = sorted(obj)
    if all(map(str.isascii, keys)):
        keys.sort(key=len)
        return keys
    return sorted(keys, key=lambda k: len(k.encode()))


# '"', '\\' and the control characters escaped (\b \f \n \r \t, the others as \u00xx), nothing
# else: what PostgreSQL prints, and what json's own C encoder does with ensure_ascii off
_json_string = encode_basestring


def row_text(texts: list[str | None]) -> str:
    """A row's canonical text from its columns' (None for NULL): per column, :data:`SEP` and its
    text, or :data:`NULL_FIELD`. Each column's edge is marked by its own separator, and a NULL by
    its own, so the text reads back into the row's values one way only, as long as no value holds
    a mark: the server looks for them in the target (:func:`separated_sql`), and a target whose
    values hold any is compared the slow way. A NULL never reads as the text '\\N'."""
    return "".join(NULL_FIELD if t is None else SEP + t for t in texts)


def row_hash(texts: list[str | None]) -> int:
    """First 64 bits of md5 of the row's canonical text, as PostgreSQL's ::bit(64)::bigint."""
    return int.from_bytes(hashlib.md5(row_text(texts).encode()).digest()[:8], "big", signed=True)

