"""``mailops tenants``: pause, resume and list the tenants, their figures, the nodes' sync
and the Postfix policy service.

Each part is a module of its own with ``register(sub)`` adding its subcommands; only
those modules are imported, and one that does not exist (yet) is left out, so a host
gets the subcommands its installed version has.
"""

from __future__ import annotations

import importlib
from typing import Any

# In this order: the operators' commands first, the nodes' jobs last.
MODULES: tuple[str, ...] = (
    "mailops.tenants.admin",  # pause, resume, list
    "mailops.tenants.figures",  # status
    "mailops.tenants.sync",  # sync
    "mailops.tenants.policy",  # policy
)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "tenants",
        help="tenants: pause, resume, list, status, sync, the policy service",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    sub = parser.add_subparsers(dest="tenants_command", metavar="ACTION")
    sub.required = True
    for name in MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:  # a module that is there but fails to import: say so
                raise
            continue
        module.register(sub)
