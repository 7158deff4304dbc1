"""Runs a command as a child subreaper and reports what outlived it.

    python3 reaper.py LOG -- CMD ARGS...

The command's stdout and stderr go to LOG. This process prints one JSON line
with the command's pid, and, once the command has exited, one with its exit
code, the wall-clock time it exited, and every process that was still alive
below this one half a second later. Because this process is a subreaper,
anything the command or its children left behind (even a double-forked
`setsid` daemon) is re-parented here, so the list is found by process tree,
not by name. Those processes are then killed and reaped.
"""

import ctypes
import json
import os
import signal
import subprocess
import sys
import time

PR_SET_CHILD_SUBREAPER = 36


def descendants(root):
    parents = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        rest = stat[stat.rfind(")") + 2 :].split()
        parents[int(name)] = (int(rest[1]), rest[0])
    found, frontier = [], [root]
    while frontier:
        p = frontier.pop()
        for pid, (ppid, state) in parents.items():
            if ppid == p:
                found.append((pid, state))
                frontier.append(pid)
    return found


def cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return "?"


def main():
    log, sep, cmd = sys.argv[1], sys.argv[2], sys.argv[3:]
    assert sep == "--"
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        sys.exit("prctl(PR_SET_CHILD_SUBREAPER) failed")
    with open(log, "wb") as out:
        child = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    print(json.dumps({"pid": child.pid}), flush=True)
    code = child.wait()
    exited_at = time.time()
    time.sleep(0.5)
    left = [
        {"pid": pid, "state": state, "cmdline": cmdline(pid)}
        for pid, state in descendants(os.getpid())
        if state != "Z"
    ]
    for p in left:
        try:
            os.kill(p["pid"], signal.SIGKILL)
        except OSError:
            pass
    while True:
        try:
            if os.waitpid(-1, os.WNOHANG) == (0, 0):
                break
        except ChildProcessError:
            break
    print(json.dumps({"exit": code, "exited_at": exited_at, "leftovers": left}), flush=True)


main()
