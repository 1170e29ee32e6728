"""Render a dict as TOML for the settings files the roles write (mailops.toml).

Only what those files need: tables (nested dicts), strings, integers, floats, booleans
and lists of those.  Keys at each level come out scalars first, then sub-tables, so the
file is valid TOML whatever order the variables were merged in.  A value TOML cannot
hold (None, a list of tables, a non-string key) fails the play with the key's path.
"""

from __future__ import annotations

import math
import re
from typing import Any

try:  # Ansible is present on the controller; the tests import this file directly.
    from ansible.errors import AnsibleFilterError
except ImportError:  # pragma: no cover

    class AnsibleFilterError(Exception):  # type: ignore[no-redef]
        pass


# fullmatch: "$" would also match before a trailing newline and leave "0\n" bare.
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_ESCAPES = {
    '"': '\\"',
    "\\": "\\\\",
    "\b": "\\b",
    "\t": "\\t",
    "\n": "\\n",
    "\f": "\\f",
    "\r": "\\r",
}


def _key(key: Any, path: str) -> str:
    if not isinstance(key, str) or not key:
        raise AnsibleFilterError(f"{path}: TOML keys must be non-empty strings, got {key!r}")
    return key if _BARE_KEY.fullmatch(key) else _string(key)


def _string(text: str) -> str:
    out = []
    for ch in text:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _value(value: Any, path: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            raise AnsibleFilterError(f"{path}: {value!r} has no place in this file")
        return repr(value)
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, list | tuple):
        if any(isinstance(v, dict) for v in value):
            raise AnsibleFilterError(f"{path}: lists of tables are not supported")
        return "[" + ", ".join(_value(v, f"{path}[{i}]") for i, v in enumerate(value)) + "]"
    raise AnsibleFilterError(f"{path}: cannot write {value!r} ({type(value).__name__}) as TOML")


def _table(data: dict[str, Any], prefix: list[str], out: list[str]) -> None:
    scalars = [(k, v) for k, v in data.items() if not isinstance(v, dict)]
    tables = [(k, v) for k, v in data.items() if isinstance(v, dict)]
    if prefix and (scalars or not tables):
        out.append("")
        out.append("[" + ".".join(prefix) + "]")
    for key, value in scalars:
        path = ".".join([*prefix, str(key)])
        out.append(f"{_key(key, path)} = {_value(value, path)}")
    for key, value in tables:
        _table(value, [*prefix, _key(key, ".".join([*prefix, str(key)]))], out)


def to_toml(data: Any) -> str:
    """Return `data` (a dict) as a TOML document ending in a newline."""
    if not isinstance(data, dict):
        raise AnsibleFilterError(f"to_toml needs a dict, got {type(data).__name__}")
    out: list[str] = []
    _table(data, [], out)
    return "\n".join(out).lstrip("\n") + "\n"


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {"to_toml": to_toml}
