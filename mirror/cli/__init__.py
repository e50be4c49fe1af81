"""The `vbo-mirror` command: parse, call the API, render. No logic lives here.

`root.py` is the command tree's root (`main`, the global options, errors, output); each group
of commands is a module of its own that registers its commands on `main` when imported here.
Exit codes: 0 success, 1 unexpected, 2 bad input, 3 remote/offline/lock, 4 local disk, 5 files
failed, 130 Ctrl-C.
"""

from .root import entry, main  # noqa: F401  (the console script, and the group tests drive)
from . import bench, manifests, sandbox, sync, tables, upkeep  # noqa: E402,F401  (each registers its commands)
