"""Run every molecule scenario under molecule/ with podman and the repo's settings.

The scenarios use the lab's node image, built here first when absent (no registry).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))

import lab  # noqa: E402


def main() -> int:
    os.environ.setdefault("CONTAINERS_CONF", str(ROOT / "tools" / "podman" / "containers.conf"))
    os.environ["PATH"] = f"{Path(sys.executable).parent}:{os.environ['PATH']}"
    os.environ.pop("ANSIBLE_CONFIG", None)  # molecule writes its own
    lab.build_images()
    names = sys.argv[1:] or sorted(
        p.name for p in (ROOT / "molecule").iterdir() if (p / "molecule.yml").exists()
    )
    failed = []
    for name in names:
        start = time.monotonic()
        lab.log(f"molecule test -s {name}")
        rc = subprocess.run(["molecule", "test", "-s", name], cwd=ROOT, check=False).returncode
        lab.log(f"molecule {name}: {'passed' if rc == 0 else 'FAILED'} in "
                f"{time.monotonic() - start:.0f} s")  # fmt: skip
        if rc:
            failed.append(name)
    if failed:
        lab.log(f"molecule scenarios failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
