#!/usr/bin/env python3
"""CPU time of the master, the satellites and PostgreSQL while a command runs.

    python3 bench/scripts/cpu_by_process.py -- ./target/release/storesync-bench upstream --runs 1

Runs the command and samples `/proc/<pid>/stat` (user + system time) of every
process named `master-service`, `satellite-agent`, `postgres` and
`storesync-bench` every 0.25 s. Prints, for each stretch in which the master
is busy (more than 20 % of a core; stretches split by 1.5 s of quiet), its
length and the CPU seconds each group used in it. In the `upstream`
scenario the first stretch is the plain backlog and the second the one with
transfers mixed in; the `COPY` phases run while the master idles. A process
that exits between samples loses its last 0.25 s; processes are told apart
by name, so binaries swapped in with STORESYNC_MASTER_BIN must keep theirs.
"""
import os
import subprocess
import sys
import time

GROUPS = {
    "master-service": "master",
    "satellite-agent": "satellites",
    "postgres": "postgresql",
    "storesync-bench": "bench",
}
TICK = 0.25
BUSY = 0.2 * TICK
GAP = 1.5


def cpu_by_pid():
    found = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as stat:
                text = stat.read()
        except OSError:
            continue
        name = text[text.index("(") + 1 : text.rindex(")")]
        group = GROUPS.get(name)
        if group is None:
            continue
        fields = text[text.rindex(")") + 2 :].split()
        # utime, stime; the start time tells a reused pid apart.
        found[(pid, fields[19])] = (group, int(fields[11]) + int(fields[12]))
    return found


def main():
    if "--" not in sys.argv:
        sys.exit(__doc__)
    command = sys.argv[sys.argv.index("--") + 1 :]
    hz = os.sysconf("SC_CLK_TCK")
    child = subprocess.Popen(command)
    last = cpu_by_pid()
    ticks = []
    started = time.monotonic()
    while child.poll() is None:
        time.sleep(TICK)
        now = cpu_by_pid()
        used = {group: 0.0 for group in GROUPS.values()}
        for key, (group, ticks_now) in now.items():
            if key in last:
                used[group] += (ticks_now - last[key][1]) / hz
        last = now
        ticks.append((time.monotonic() - started, used))
    stretches = []
    for at, used in ticks:
        if used["master"] <= BUSY:
            continue
        if not stretches or at - stretches[-1]["end"] > GAP:
            stretches.append({"start": at, "end": at, "used": dict.fromkeys(used, 0.0)})
        stretch = stretches[-1]
        stretch["end"] = at
        for group, seconds in used.items():
            stretch["used"][group] += seconds
    print("cpu_by_process: CPU seconds per stretch in which the master is busy")
    for stretch in stretches:
        if stretch["end"] - stretch["start"] < 1.0:
            continue
        groups = " ".join(f"{g}={s:.2f}" for g, s in stretch["used"].items())
        print(f"  {stretch['start']:6.1f}-{stretch['end']:6.1f} s: {groups}")
    sys.exit(child.returncode)


if __name__ == "__main__":
    main()
