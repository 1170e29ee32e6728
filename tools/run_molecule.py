"""Run the molecule scenarios under molecule/ (one per role), a few side by side.

    tools/run_molecule.py [-j N] [SCENARIO ...]

Each scenario runs `molecule test -s NAME` (its own container, molecule-NAME, on the
lab's node image: built here first when absent, no registry) with its output in
build/molecule/NAME.log; the tail of a failed one's log is printed.  The mailops
wheelhouse is built once before any scenario starts, so the scenarios that install
mailops find it current instead of building it at the same time.  Prints each
scenario's time and the total; exits 1 when any failed.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import lab  # tools/lab.py: this script's own directory is first on the path

ROOT = Path(__file__).resolve().parent.parent
LOGS = ROOT / "build" / "molecule"


def scenarios() -> list[str]:
    return sorted(p.name for p in (ROOT / "molecule").iterdir() if (p / "molecule.yml").exists())


def build_wheelhouse() -> None:
    """What the mailops role's first task does, once for every scenario."""
    subprocess.run(
        [sys.executable, str(ROOT / "roles/mailops/files/build_wheelhouse.py"),
         "--source", str(ROOT), "--out", str(ROOT / ".build/wheelhouse"), "--extras", "pgsql,ses"],
        check=True, stdout=subprocess.DEVNULL,
    )  # fmt: skip


def run(name: str) -> tuple[str, bool, float]:
    start = time.monotonic()
    log = LOGS / f"{name}.log"
    with log.open("w") as out:
        rc = subprocess.run(
            ["molecule", "test", "-s", name], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, check=False,
        ).returncode  # fmt: skip
    took = time.monotonic() - start
    lab.log(f"molecule {name}: {'passed' if rc == 0 else 'FAILED'} in {took:.0f} s (log: {log})")
    if rc:
        print("".join(log.read_text(errors="replace").splitlines(keepends=True)[-40:]), flush=True)
    return name, rc == 0, took


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", metavar="SCENARIO", help="default: all of them")
    parser.add_argument("-j", "--jobs", type=int, default=2,
                        help="scenarios at a time (default 2: one per core of the reference "
                             "machine; each converge is mostly one process)")  # fmt: skip
    args = parser.parse_args()
    names = args.names or scenarios()
    unknown = sorted(set(names) - set(scenarios()))
    if unknown:
        parser.error(f"no such scenario: {', '.join(unknown)}")
    os.environ.setdefault("CONTAINERS_CONF", str(ROOT / "tools" / "podman" / "containers.conf"))
    os.environ["PATH"] = f"{Path(sys.executable).parent}:{os.environ['PATH']}"
    os.environ.pop("ANSIBLE_CONFIG", None)  # molecule writes its own
    os.environ["PY_COLORS"] = os.environ["ANSIBLE_FORCE_COLOR"] = "0"
    LOGS.mkdir(parents=True, exist_ok=True)
    lab.build_images()
    build_wheelhouse()
    start = time.monotonic()
    lab.log(f"molecule: {len(names)} scenarios, {args.jobs} at a time: {', '.join(names)}")
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        results = list(pool.map(run, names))
    failed = [name for name, ok, _ in results if not ok]
    times = ", ".join(f"{name} {took:.0f} s" for name, _, took in results)
    lab.log(f"molecule: {len(names) - len(failed)} of {len(names)} passed in "
            f"{time.monotonic() - start:.0f} s ({times})")  # fmt: skip
    if failed:
        lab.log(f"molecule scenarios failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
