"""Run every benchmark in bench/ and write bench/results.json plus a table.

A benchmark is a module ``bench/bench_<name>.py`` with ``run(workdir: Path) -> list[Result]``.
Each result compares our figure with the tool a user would otherwise run (pflogsumm,
stock Postfix) on the same input, on this machine, in one run.  Benchmarks bound their
own size and time and clean up after themselves; ``workdir`` is removed afterwards.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import os
import platform
import shutil
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from benchlib import Result  # noqa: E402


def machine() -> str:
    mem_kib = 0
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    mem_kib = int(line.split()[1])
    except OSError:
        pass
    return f"{platform.machine()} {os.cpu_count()} cores {mem_kib // 1024 // 1024} GiB"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("names", nargs="*", help="run only these benchmarks (bench_<name>.py)")
    ap.add_argument("--out", default=str(HERE / "results.json"))
    args = ap.parse_args()

    modules = sorted(HERE.glob("bench_*.py"))
    if args.names:
        modules = [m for m in modules if m.stem.removeprefix("bench_") in args.names]
    rows: list[dict[str, Any]] = []
    failed = 0
    for path in modules:
        spec = importlib.util.spec_from_file_location(path.stem, path)
        assert spec and spec.loader
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        work = Path(tempfile.mkdtemp(prefix=f"{path.stem}-"))
        print(f">>> {path.stem}", flush=True)
        try:
            results: list[Result] = mod.run(work)
        except Exception:
            traceback.print_exc()
            failed += 1
            continue
        finally:
            shutil.rmtree(work, ignore_errors=True)
        for r in results:
            row = r.as_dict()
            row["machine"] = machine()
            row["date"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
            rows.append(row)
    Path(args.out).write_text(json.dumps(rows, indent=2) + "\n")
    print()
    print(f"{'benchmark':40} {'unit':10} {'ours':>12} {'peer':>12} {'ratio':>8} {'target':>8}  met")
    for row in rows:
        peer = "-" if row["peer"] is None else f"{row['peer']:.4g}"
        ratio = "-" if row["ratio"] is None else f"{row['ratio']:.3g}"
        print(
            f"{row['name']:40} {row['unit']:10} {row['ours']:>12.4g} {peer:>12} "
            f"{ratio:>8} {row['target']!s:>8}  {'yes' if row['met'] else 'NO'}"
        )
    print(f"\nwrote {args.out}")
    return 1 if failed or not all(r["met"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
