#!/usr/bin/python
"""Package Python packages as a Lambda deployment zip, byte for byte the same zip for
the same sources, so that amazon.aws.lambda sees the same CodeSha256 and a second run
changes nothing.

Ansible module; the documentation strings below are what ``ansible-doc`` shows.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.machinery
import io
import os
import sys
import zipfile
from pathlib import Path
from typing import Any

try:
    from ansible.module_utils.basic import AnsibleModule
except ImportError:  # pragma: no cover - the logic is importable without Ansible
    AnsibleModule = None

DOCUMENTATION = r"""
---
module: lambda_zip
short_description: A reproducible Lambda deployment zip of Python packages
description:
  - Finds each top-level package (or single-file module) named in O(modules), first in
    the directories of O(paths), then on the controller Python's own path, and writes
    them into one zip at the archive's root, as Lambda's Python runtimes import them.
  - The zip depends only on the files' paths and contents; timestamps are fixed,
    entries sorted, modes normalised, and C(__pycache__) and compiled files left out.
    So the same sources give the same bytes and the same C(CodeSha256), and
    O(dest) is rewritten (changed) only when a source changed.
  - Packages with compiled extensions are copied as they are on the controller; name
    only pure-Python ones unless the controller matches the Lambda runtime.
options:
  dest:
    description: Path of the zip to write; its directory is made if missing.
    type: path
    required: true
  modules:
    description: Top-level import names to package, e.g. C(mailops).
    type: list
    elements: str
    required: true
  paths:
    description: Directories searched before the controller's Python path.
    type: list
    elements: path
    default: []
"""

RETURN = r"""
code_sha256:
  description: Base64 SHA-256 of the zip, as Lambda reports it in CodeSha256.
  type: str
  returned: always
size:
  description: Size of the zip in bytes.
  type: int
  returned: always
files:
  description: Number of files in the zip.
  type: int
  returned: always
"""

# The earliest date a zip can hold: no clock, no build host leaks into the archive.
EPOCH = (1980, 1, 1, 0, 0, 0)
SKIPPED_DIRS = {"__pycache__"}
SKIPPED_SUFFIXES = (".pyc", ".pyo")


class PackageError(Exception):
    """A module that cannot be found or packaged."""


def locate(name: str, paths: list[str]) -> tuple[Path, Path]:
    """The source of top-level module NAME: (its file or package directory, the root
    the archive names are relative to)."""
    if not name or "." in name or "/" in name:
        raise PackageError(f"{name!r} is not a top-level module name")
    spec = importlib.machinery.PathFinder.find_spec(name, [*paths, *sys.path])
    if spec is None or not spec.origin or spec.origin in ("built-in", "frozen"):
        raise PackageError(f"module {name} not found in {[*paths]} or the controller's path")
    origin = Path(spec.origin)
    if spec.submodule_search_locations:
        package = origin.parent
        return package, package.parent
    return origin, origin.parent


def sources(names: list[str], paths: list[str]) -> list[tuple[str, Path]]:
    """(archive name, file) for every file of the modules, sorted by archive name."""
    found: dict[str, Path] = {}
    for name in names:
        top, root = locate(name, paths)
        if top.is_file():
            files = [top]
        else:
            files = []
            for directory, dirs, filenames in os.walk(top):
                dirs[:] = sorted(d for d in dirs if d not in SKIPPED_DIRS)
                files += [Path(directory, f) for f in filenames if not f.endswith(SKIPPED_SUFFIXES)]
        for path in files:
            arcname = path.relative_to(root).as_posix()
            if arcname in found and found[arcname] != path:
                raise PackageError(f"{arcname} comes from two places: {found[arcname]}, {path}")
            found[arcname] = path
    if not found:
        raise PackageError("nothing to package")
    return sorted(found.items())


def build(names: list[str], paths: list[str]) -> tuple[bytes, int]:
    """The zip's bytes and its number of files."""
    entries = sources(names, paths)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        for arcname, path in entries:
            info = zipfile.ZipInfo(arcname, date_time=EPOCH)
            info.compress_type = zipfile.ZIP_DEFLATED
            executable = os.access(path, os.X_OK)
            info.external_attr = ((0o100755 if executable else 0o100644) & 0xFFFF) << 16
            info.create_system = 3  # Unix, whatever the controller
            archive.writestr(info, path.read_bytes())
    return buffer.getvalue(), len(entries)


def code_sha256(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode("ascii")


def write(dest: Path, data: bytes, check: bool) -> bool:
    """Write DATA to DEST unless it holds exactly that; whether it had to."""
    try:
        if dest.read_bytes() == data:
            return False
    except FileNotFoundError:
        pass
    if not check:
        dest.parent.mkdir(parents=True, exist_ok=True)
        partial = dest.with_name(dest.name + ".partial")
        partial.write_bytes(data)
        partial.chmod(0o644)
        partial.replace(dest)
    return True


def main() -> None:
    module: Any = AnsibleModule(
        argument_spec={
            "dest": {"type": "path", "required": True},
            "modules": {"type": "list", "elements": "str", "required": True},
            "paths": {"type": "list", "elements": "path", "default": []},
        },
        supports_check_mode=True,
    )
    p = module.params
    try:
        data, files = build(p["modules"], p["paths"])
    except (PackageError, OSError) as exc:
        module.fail_json(msg=f"lambda_zip: {exc}")
    changed = write(Path(p["dest"]), data, module.check_mode)
    module.exit_json(
        changed=changed, dest=p["dest"], code_sha256=code_sha256(data), size=len(data), files=files
    )


if __name__ == "__main__":
    main()
