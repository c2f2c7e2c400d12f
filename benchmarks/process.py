"""Runs one configuration as its own process, so its memory is its own: a
polling thread samples the RSS of the process and all its descendants every
0.2 s (for charlm: the job driver, each Ray Train worker, the raylet and Ray's
other processes, reported separately, plus the object store's own size, which
shows in the RSS of the processes that write or read objects, not the
raylet's)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
import time

import psutil

from benchmarks.common import MB, ROOT

ANSI = re.compile(r"\x1b\[[0-9;]*m")  # Ray colours the prefix of forwarded worker lines


def _label(cmdline: list[str], name: str) -> str:
    """A short name for a process: Ray's title (ray::RayTrainWorker...), else
    its script or executable."""
    if cmdline and cmdline[0].startswith("ray::"):
        return cmdline[0].split()[0]
    for arg in cmdline:
        if arg.endswith(".py"):
            return os.path.basename(arg)
    return os.path.basename(cmdline[0]) if cmdline else name


def _plasma_file(pid: int) -> str | None:
    """/proc path of the raylet's open object store file (deleted /dev/shm/plasma*)."""
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            path = f"/proc/{pid}/fd/{fd}"
            try:
                if "plasma" in os.readlink(path):
                    return path
            except OSError:
                continue
    except OSError:
        pass
    return None


class RssPoller(threading.Thread):
    """Peak RSS of a process and each of its descendants, sampled every
    `interval` seconds: short-lived peaks between samples are missed, so the
    root's peak is cross-checked against the kernel's ru_maxrss."""

    def __init__(self, root_pid: int, root_role: str, interval: float = 0.2):
        super().__init__(daemon=True)
        self.root_pid, self.root_role, self.interval = root_pid, root_role, interval
        self.procs: dict[int, dict] = {}
        self.tree_peak = 0
        self.store_peak = 0  # bytes: the object store's shared-memory file, allocated pages
        self._store_file: str | None = None
        self.samples = 0
        self._halt = threading.Event()

    def run(self) -> None:
        try:
            root = psutil.Process(self.root_pid)
        except psutil.NoSuchProcess:
            return
        while not self._halt.is_set():
            try:
                tree = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                break
            total = 0
            for p in tree:
                try:
                    total += self._sample(p)
                except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                    pass
            self.tree_peak = max(self.tree_peak, total)
            self._sample_store()
            self.samples += 1
            self._halt.wait(self.interval)

    def _sample(self, p: psutil.Process) -> int:
        mem, cmdline, name = p.memory_info(), p.cmdline(), p.name()  # may raise: nothing recorded
        rec = self.procs.get(p.pid)
        if rec is None or rec["proc"].create_time() != p.create_time():  # a reused pid
            rec = self.procs[p.pid] = {"proc": p, "role": "other", "label": "",
                                       "peak": 0, "shared": 0}
        label = _label(cmdline, name)
        # Ray workers retitle themselves (ray::IDLE → ray::RayTrainWorker...):
        # a process that was ever a training worker stays one.
        if p.pid == self.root_pid:
            rec["role"] = self.root_role
        elif "RayTrainWorker" in " ".join(cmdline):
            rec["role"] = "train_worker"
        elif name == "raylet" or label == "raylet":
            rec["role"] = "raylet"
        if label != "ray::IDLE" or not rec["label"]:
            rec["label"] = label
        if mem.rss > rec["peak"]:
            rec["peak"], rec["shared"] = mem.rss, getattr(mem, "shared", 0)
        if rec["role"] == "raylet" and self._store_file is None:
            self._store_file = _plasma_file(p.pid)
        return mem.rss

    def _sample_store(self) -> None:
        """The raylet's own RSS does not grow with the object store (objects are
        written and read through the clients' mappings), so measure the store
        itself: the pages allocated in its /dev/shm file, held open by the raylet."""
        if self._store_file is None:
            return
        try:
            self.store_peak = max(self.store_peak, os.stat(self._store_file).st_blocks * 512)
        except OSError:
            pass

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=5)

    def summary(self) -> dict:
        """Peaks in MB by role; 'shared' is the shared part (libraries, object
        store pages) of the RSS at its peak."""
        def row(pid: int, r: dict) -> dict:
            return {"pid": pid, "label": r["label"], "peak_rss_mb": round(r["peak"] / MB, 1),
                    "shared_mb_at_peak": round(r["shared"] / MB, 1)}

        by_role: dict[str, list[dict]] = {}
        for pid, r in self.procs.items():
            by_role.setdefault(r["role"], []).append(row(pid, r))
        for rows in by_role.values():
            rows.sort(key=lambda x: -x["peak_rss_mb"])
        root = by_role.get(self.root_role, [None])[0]
        return {
            "interval_s": self.interval, "samples": self.samples,
            "root_role": self.root_role,
            "root_peak_rss_mb": root["peak_rss_mb"] if root else None,
            "train_workers": by_role.get("train_worker", []),
            "raylet": (by_role.get("raylet") or [None])[0],
            "object_store_peak_mb": (round(self.store_peak / MB, 1)
                                     if self._store_file else None),
            "others": by_role.get("other", []),
            # Summed at one sample: pages shared between processes count in each.
            "tree_peak_rss_mb": round(self.tree_peak / MB, 1),
        }

    def leftovers(self) -> list[psutil.Process]:
        """Descendants that outlived the root (ours: started by our child)."""
        alive = []
        for pid, r in self.procs.items():
            if pid != self.root_pid and r["proc"].is_running():  # is_running checks pid reuse
                alive.append(r["proc"])
        return alive

def run_process(name: str, cmd: list[str], env: dict[str, str], logdir: str,
                root_role: str) -> dict:
    """Run cmd to completion with its memory polled; returns its stdout lines,
    each stamped with seconds since the process was created."""
    print(f"\n=== {name}: {' '.join(cmd)}", flush=True)
    load = os.getloadavg()
    stderr_path = os.path.join(logdir, f"{name}.stderr")
    with open(stderr_path, "wb") as err:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=err,
                                text=True, bufsize=1, start_new_session=True)
    created = psutil.Process(proc.pid).create_time()
    poller = RssPoller(proc.pid, root_role)
    poller.start()
    lines: list[tuple[float, str]] = []

    def read() -> None:
        for line in proc.stdout:
            line = ANSI.sub("", line.rstrip())
            lines.append((time.time() - created, line))
            print(f"  [{name}] {line}", flush=True)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        _, status, usage = os.wait4(proc.pid, 0)  # wait4: this child's own ru_maxrss
    except KeyboardInterrupt:
        os.killpg(proc.pid, 15)
        raise
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.time() - created
    reader.join(timeout=10)
    poller.stop()
    _reap(poller.leftovers())
    with open(stderr_path, "rb") as f:
        tail = f.read()[-3000:].decode("utf-8", "replace")
    if proc.returncode != 0:
        print(f"  [{name}] FAILED (exit {proc.returncode}); stderr tail:\n{tail}", flush=True)
    memory = poller.summary()
    # KB on Linux: the larger of the process's own peak and its reaped children's.
    memory["ru_maxrss_mb"] = round(usage.ru_maxrss / 1024, 1)
    return {"config": name, "command": cmd, "returncode": proc.returncode,
            "wall_s": round(wall, 1), "load_avg_before": [round(x, 2) for x in load],
            "lines": lines, "memory": memory,
            "stderr_tail": tail if proc.returncode else None}


def _reap(procs: list[psutil.Process], grace: float = 15.0) -> None:
    """Ray tears its processes down as the driver exits; give it time, then
    end what is left so the next configuration starts on a quiet machine."""
    _, alive = psutil.wait_procs(procs, timeout=grace)
    for p in alive:
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(alive, timeout=5)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass


def json_lines(run: dict) -> list[tuple[float, dict]]:
    """The JSON lines a configuration printed (its per-epoch figures), with their times."""
    out = []
    for t, line in run.pop("lines"):
        if line.startswith("{"):
            try:
                out.append((t, json.loads(line)))
            except json.JSONDecodeError:
                pass
    return out
