"""A fork server for ``ansible-inventory``, run as a script by tests/support/inventory_cache.py.

Most of an ``ansible-inventory --list`` run is importing Ansible (about 0.4 s of CPU,
a second or more on a loaded machine); reading a small inventory is a few
milliseconds.  This process imports ``ansible.cli.inventory`` once, then for each
request (a JSON line on stdin: the argv) forks a child that runs the same ``main``
the ``ansible-inventory`` script runs, with its stdout and stderr in files, and
answers a JSON line: the exit code and both outputs.  Each child starts from the
freshly imported state, so no run sees another's.  Ansible reads its settings
(ansible.cfg in the working directory, ANSIBLE_* variables) at import: the client
sends only requests made with this process's working directory and ANSIBLE_*
environment, and runs the real executable for any other.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import tempfile
import traceback


def run_child(argv: list[str], out_fd: int, err_fd: int) -> None:
    code = 1
    try:
        os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
        os.dup2(out_fd, 1)
        os.dup2(err_fd, 2)
        from ansible.cli.inventory import main  # type: ignore[import-untyped]

        sys.argv = list(argv)
        try:
            main(list(argv))
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # the child must always reach os._exit
        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


# What a run imports after the CLI module: plain modules, no state of a run in them.
PRELOAD = [
    "ansible.cli.inventory",
    "ansible.playbook.play_context",
    "ansible.plugins.cache.jsonfile",
    "ansible.plugins.connection",
    "ansible.plugins.inventory.auto",
    "ansible.plugins.inventory.host_list",
    "ansible.plugins.inventory.ini",
    "ansible.plugins.inventory.script",
    "ansible.plugins.inventory.toml",
    "ansible.plugins.inventory.yaml",
    "ansible.plugins.shell",
    "ansible.plugins.vars.host_group_vars",
    "ansible.utils.shlex",
]


def serve() -> None:
    for name in PRELOAD:  # the imports every request is spared
        importlib.import_module(name)

    reply = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)  # Ansible's own prints never reach the client
    print(json.dumps({"ready": True}), file=reply, flush=True)
    for line in sys.stdin:
        argv = json.loads(line)["argv"]
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            pid = os.fork()
            if pid == 0:
                run_child(argv, out.fileno(), err.fileno())
            _, status = os.waitpid(pid, 0)
            out.seek(0)
            err.seek(0)
            answer = {
                "returncode": os.waitstatus_to_exitcode(status),
                "stdout": out.read().decode("utf-8", "replace"),
                "stderr": err.read().decode("utf-8", "replace"),
            }
        print(json.dumps(answer), file=reply, flush=True)


if __name__ == "__main__":
    serve()
