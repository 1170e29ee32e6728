"""Read one table of the settings file against a table of defaults, with types checked."""

from __future__ import annotations

from typing import Any

from mailops.config import ConfigError


def read_table(
    data: dict[str, Any],
    name: str,
    defaults: dict[str, Any],
    *,
    strict: bool = True,
) -> dict[str, Any]:
    """Defaults overlaid with ``[name]`` from the settings file.

    Every value must have its default's type (an int is accepted where a float is
    expected).  ``strict`` rejects keys not in ``defaults``, so a typo is an error rather
    than a silently ignored setting; tables shared with another tool pass False.
    """
    table = data.get(name, {})
    if not isinstance(table, dict):
        raise ConfigError(f"[{name}] must be a table, not {type(table).__name__}")
    merged = dict(defaults)
    for key, value in table.items():
        if key not in defaults:
            if strict:
                raise ConfigError(f"[{name}] unknown key {key!r}")
            continue
        want = type(defaults[key])
        ok = isinstance(value, want) or (want is float and isinstance(value, int))
        if not ok or (isinstance(value, bool) and want is not bool):
            raise ConfigError(f"[{name}] {key} must be {want.__name__}, not {value!r}")
        merged[key] = value
    return merged


def non_negative(table: str, values: dict[str, Any], *keys: str) -> None:
    for key in keys:
        if values[key] < 0:
            raise ConfigError(f"[{table}] {key} must be >= 0")
