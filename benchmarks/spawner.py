"""A small process that starts the benchmark's measured children, so their peak RSS is theirs.

Linux folds the RSS a process had before exec into the peak (ru_maxrss) of what it execs,
and a child starts as a copy of its parent: every tool launched straight from the benchmark,
which holds manifests and replicas, would report at least the benchmark's own size. This
process is started first, stays a few MiB, and spawns each child on request; the floor it
leaves is its own size, said in RESULTS.md.

Protocol (JSON lines): the parent writes {"argv", "env", "cwd", "out"}; the spawner answers
{"pid"} once started, then {"rc", "wall_s", "user_s", "sys_s", "max_rss_kib"} when it ends.
"""

import json
import os
import sys
import time


def main() -> int:
    rin, wout = sys.stdin, sys.stdout
    for line in rin:
        req = json.loads(line)
        fd = os.open(req["out"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        null = os.open(os.devnull, os.O_RDONLY)
        t0 = time.perf_counter()
        try:
            pid = os.posix_spawnp(req["argv"][0], req["argv"], req["env"],
                                 file_actions=[(os.POSIX_SPAWN_DUP2, null, 0), (os.POSIX_SPAWN_DUP2, fd, 1),
                                               (os.POSIX_SPAWN_DUP2, fd, 2)],
                                 setsid=True) if not req.get("cwd") else _spawn_in(req, fd, null)
        except OSError as exc:
            os.close(fd)
            os.close(null)
            wout.write(json.dumps({"error": f"{type(exc).__name__}: {exc}"}) + "\n")
            wout.flush()
            continue
        os.close(fd)
        os.close(null)
        wout.write(json.dumps({"pid": pid}) + "\n")
        wout.flush()
        _, status, ru = os.wait4(pid, 0)
        wall = time.perf_counter() - t0
        wout.write(json.dumps({"rc": os.waitstatus_to_exitcode(status), "wall_s": wall, "user_s": ru.ru_utime,
                               "sys_s": ru.ru_stime, "max_rss_kib": ru.ru_maxrss}) + "\n")
        wout.flush()
    return 0


def _spawn_in(req, fd, null) -> int:
    """posix_spawn has no chdir before Python 3.13's file action: go through /bin/sh's cd."""
    script = 'cd "$1" && shift && exec "$@"'
    argv = ["/bin/sh", "-c", script, "sh", req["cwd"], *req["argv"]]
    return os.posix_spawn("/bin/sh", argv, req["env"],
                          file_actions=[(os.POSIX_SPAWN_DUP2, null, 0), (os.POSIX_SPAWN_DUP2, fd, 1),
                                        (os.POSIX_SPAWN_DUP2, fd, 2)], setsid=True)


if __name__ == "__main__":
    sys.exit(main())
