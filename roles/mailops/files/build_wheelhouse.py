#!/usr/bin/env python3
"""Build the mailops wheelhouse on the controller: the package and every dependency.

The hosts install from it with ``pip --no-index``, so they need no package index (an
EC2 host in a locked-down VPC, a lab container).  The wheelhouse is rebuilt only when
the sources changed (a hash of pyproject.toml and the package tree), which keeps a
second converge from copying and reinstalling anything.

Prints one JSON line: {"changed": bool, "dir": ..., "hash": ...}.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path


def source_hash(source: Path) -> str:
    digest = hashlib.sha256()
    files = [source / "pyproject.toml"]
    files += sorted(
        p
        for p in (source / "scripts" / "mailops").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
    )
    for path in files:
        digest.update(str(path.relative_to(source)).encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", required=True, type=Path, help="the repository root")
    parser.add_argument("--out", required=True, type=Path, help="the wheelhouse directory")
    parser.add_argument("--extras", default="pgsql", help="extras to include (comma list)")
    args = parser.parse_args()
    source, out = args.source.resolve(), args.out.resolve()
    if not (source / "pyproject.toml").is_file():
        print(f"build_wheelhouse: {source} has no pyproject.toml", file=sys.stderr)
        return 2
    wanted = source_hash(source) + "|" + args.extras
    stamp = out / ".source-hash"
    if stamp.is_file() and stamp.read_text() == wanted:
        print(json.dumps({"changed": False, "dir": str(out), "hash": wanted}))
        return 0
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".wheelhouse-", dir=out.parent))
    try:
        target = f"{source}[{args.extras}]" if args.extras else str(source)
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--quiet", "--wheel-dir", str(tmp), target],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode:
            print(f"build_wheelhouse: pip wheel failed:\n{proc.stderr}", file=sys.stderr)
            return 1
        (tmp / ".source-hash").write_text(wanted)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    print(json.dumps({"changed": True, "dir": str(out), "hash": wanted}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
