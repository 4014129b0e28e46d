"""Keeps a vLLM server from outliving the shard job that started it (standard library only).

Run by server.VllmServer as ``python _guard.py PARENT_PID GRACE_S LOG -- COMMAND...``
in a session (and so a process group) of its own. It starts the server as its
child, in that same group, and stops the whole group (the API server, vLLM's
engine-core and worker processes) when any of these happens:

* its standard input, a pipe from the job, reaches end of file: the job closed it,
  or the job died, ``kill -9`` included (the kernel closes a dead process's pipes);
* it gets SIGTERM: from the kernel when the job dies (parent-death signal), or
  from Slurm at a time limit or a cancel;
* the server exits by itself (its children are then stopped too).

Stopping is SIGTERM to the group, up to GRACE_S seconds for vLLM to shut down
cleanly, then SIGKILL to whatever of the group is left. The guard exits with the
server's exit status.
"""

from __future__ import annotations

import ctypes
import os
import select
import signal
import subprocess
import sys
import time

PR_SET_PDEATHSIG = 1


def _die_with_parent(parent: int) -> None:
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: the stdin pipe still ends the server
        pass
    if os.getppid() != parent:  # the job died before the signal was armed
        sys.exit(1)


def _group_members() -> list[int]:
    """The other live processes of this process group, from /proc."""
    me, group = os.getpid(), os.getpgrp()
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="utf-8", errors="replace") as f:
                fields = f.read().rpartition(")")[2].split()
        except OSError:
            continue
        # after the command name: state, ppid, pgrp, ...; zombies are already dead
        if len(fields) > 2 and int(fields[2]) == group and fields[0] != "Z":
            members.append(int(entry))
    return members


def _stop_group(server: subprocess.Popen, grace_s: float) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        os.killpg(os.getpgrp(), signal.SIGTERM)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        server.poll()
        if not _group_members():
            return
        time.sleep(0.2)
    for pid in _group_members():
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    server.wait()


def main(argv: list[str]) -> int:
    parent, grace_s, log_path = int(argv[0]), float(argv[1]), argv[2]
    command = argv[argv.index("--") + 1 :]
    _die_with_parent(parent)
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(True))
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the job, which closes the pipe
    with open(log_path, "ab") as log:
        server = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    while not stop and server.poll() is None:
        try:
            ready, _, _ = select.select([sys.stdin], [], [], 0.5)
        except InterruptedError:
            continue
        if ready and not os.read(sys.stdin.fileno(), 4096):
            break  # the job closed the pipe or died
    _stop_group(server, grace_s)
    code = server.returncode
    return code if code >= 0 else 128 - code  # killed by a signal: 128 + its number, as a shell says


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
