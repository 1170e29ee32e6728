"""Render Postfix main.cf and master.cf from layered lists of small entries.

The postfix role concatenates its layers (role defaults, profile, all hosts, group,
host, and what other roles export) and hands the list to these filters; the templates
hold no Postfix knowledge.

main.cf entries::

    - name: smtpd_recipient_restrictions   # parameter name
      value: [permit_mynetworks, {name: reject_unauth_destination, weight: 20}]
      state: present                       # or absent: drop the parameter
      comment: Never an open relay         # written above the parameter

* A later entry with the same name replaces a scalar value.  For list values the items
  merge: an item (a string, or ``{name, weight, state}``) with the same name as an
  earlier one replaces it, ``state: absent`` removes it, and the merged list is sorted
  by ``weight`` (default 50, stable, so equal weights keep their order).
* Booleans become ``yes``/``no``; lists are written one item per continuation line.

master.cf entries::

    - service: submission                  # with type, the key of the entry
      type: inet
      private: n                           # columns as in master(5); "-" is the default
      command: smtpd
      args: ["-o syslog_name=postfix/submission", ...]
      state: present
      weight: 50                           # order in the file

Errors (a missing name, a value of the wrong shape) raise AnsibleFilterError with a
message naming the entry, so a wrong variable fails the play early.
"""

from __future__ import annotations

from typing import Any

try:  # Ansible is present on the controller; the tests import this file directly.
    from ansible.errors import AnsibleFilterError
except ImportError:  # pragma: no cover

    class AnsibleFilterError(Exception):  # type: ignore[no-redef]
        pass


DEFAULT_WEIGHT = 50
_MASTER_COLUMNS = ("private", "unpriv", "chroot", "wakeup", "maxproc")


def _scalar(value: Any, where: str) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int | float | str):
        text = str(value)
        if "\n" in text:
            raise AnsibleFilterError(f"{where}: value must be one line, got {text!r}")
        return text
    raise AnsibleFilterError(f"{where}: expected a string, number or boolean, got {value!r}")


def _item(item: Any, where: str) -> dict[str, Any]:
    if isinstance(item, dict):
        if "name" not in item:
            raise AnsibleFilterError(f"{where}: list item {item!r} has no 'name'")
        return {
            "name": _scalar(item["name"], where),
            "weight": int(item.get("weight", DEFAULT_WEIGHT)),
            "state": item.get("state", "present"),
        }
    return {"name": _scalar(item, where), "weight": DEFAULT_WEIGHT, "state": "present"}


def _merge_items(old: list[dict[str, Any]], new: list[Any], where: str) -> list[dict[str, Any]]:
    merged = list(old)
    for raw in new:
        item = _item(raw, where)
        for i, existing in enumerate(merged):
            if existing["name"] == item["name"]:
                merged[i] = item
                break
        else:
            merged.append(item)
    return merged


def postfix_maincf(entries: list[Any]) -> list[dict[str, Any]]:
    """Merge main.cf layers into an ordered list of {name, value, comment}.

    ``value`` is a string, or a list of strings for multi-line list parameters.
    """
    if not isinstance(entries, list):
        raise AnsibleFilterError(f"postfix main.cf entries must be a list, got {entries!r}")
    merged: dict[str, dict[str, Any]] = {}
    for n, entry in enumerate(entries):
        if not isinstance(entry, dict) or "name" not in entry:
            raise AnsibleFilterError(f"main.cf entry #{n} needs a 'name': {entry!r}")
        name = str(entry["name"])
        where = f"main.cf {name}"
        state = entry.get("state", "present")
        if state not in ("present", "absent"):
            raise AnsibleFilterError(f"{where}: state must be present or absent, not {state!r}")
        if state == "absent":
            merged.pop(name, None)
            continue
        if "value" not in entry:
            raise AnsibleFilterError(f"{where}: needs a 'value' (or state: absent)")
        value = entry["value"]
        current = merged.get(name)
        if isinstance(value, list):
            old = current["items"] if current and current.get("items") is not None else []
            slot = {"items": _merge_items(old, value, where), "value": None}
        else:
            slot = {"items": None, "value": _scalar(value, where)}
        slot["comment"] = entry.get("comment", current["comment"] if current else "")
        if current is not None:
            # Keep the position of the first definition: layers refine, not reorder.
            current.update(slot)
        else:
            merged[name] = slot
    out: list[dict[str, Any]] = []
    for name, slot in merged.items():
        if slot["items"] is not None:
            items = [i for i in slot["items"] if i["state"] != "absent"]
            items.sort(key=lambda i: i["weight"])
            value: str | list[str] = [i["name"] for i in items]
        else:
            value = slot["value"]
        out.append({"name": name, "value": value, "comment": slot["comment"] or ""})
    return out


def postfix_mastercf(entries: list[Any]) -> list[dict[str, Any]]:
    """Merge master.cf layers into ordered services keyed by (service, type)."""
    if not isinstance(entries, list):
        raise AnsibleFilterError(f"postfix master.cf entries must be a list, got {entries!r}")
    merged: dict[tuple[str, str], dict[str, Any]] = {}
    for n, entry in enumerate(entries):
        if not isinstance(entry, dict) or "service" not in entry or "type" not in entry:
            raise AnsibleFilterError(f"master.cf entry #{n} needs 'service' and 'type': {entry!r}")
        key = (str(entry["service"]), str(entry["type"]))
        where = f"master.cf {key[0]}/{key[1]}"
        if key[1] not in ("inet", "unix", "unix-dgram", "fifo", "pass"):
            raise AnsibleFilterError(f"{where}: unknown service type {key[1]!r}")
        if entry.get("state", "present") == "absent":
            merged.pop(key, None)
            continue
        current = merged.get(key, {})
        svc = dict(current)
        svc.update({k: v for k, v in entry.items() if k != "state"})
        if "command" not in svc:
            raise AnsibleFilterError(f"{where}: needs a 'command'")
        for col in _MASTER_COLUMNS:
            svc[col] = _scalar(svc.get(col, "-"), where)
        args = svc.get("args", [])
        if not isinstance(args, list):
            raise AnsibleFilterError(f"{where}: args must be a list")
        svc["args"] = [_scalar(a, where) for a in args]
        svc["weight"] = int(svc.get("weight", DEFAULT_WEIGHT))
        merged[key] = svc
    services = list(merged.values())
    services.sort(key=lambda s: s["weight"])
    return services


def postfix_map_lines(entries: Any) -> list[str]:
    """Render a lookup table from a dict or a list of {key, value} into 'key value' lines."""
    if isinstance(entries, dict):
        pairs = list(entries.items())
    elif isinstance(entries, list):
        pairs = []
        for e in entries:
            if not isinstance(e, dict) or "key" not in e or "value" not in e:
                raise AnsibleFilterError(f"map entry needs 'key' and 'value': {e!r}")
            pairs.append((e["key"], e["value"]))
    else:
        raise AnsibleFilterError(f"map entries must be a dict or a list, got {entries!r}")
    lines = []
    for key, value in pairs:
        k = _scalar(key, "map key")
        if not k or any(c.isspace() for c in k):
            raise AnsibleFilterError(f"map key {k!r} must be non-empty without spaces")
        lines.append(f"{k} {_scalar(value, f'map value for {k}')}")
    return lines


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {
            "postfix_maincf": postfix_maincf,
            "postfix_mastercf": postfix_mastercf,
            "postfix_map_lines": postfix_map_lines,
        }
