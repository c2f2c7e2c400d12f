"""jobs.doctor: one check pinned to every alive node (charlm.cluster.node), an
all-reduce across the GPUs in reach, one table, then `ok` or one `error:` line
per failing node."""

from __future__ import annotations

import json
import posixpath
import sys
from dataclasses import dataclass

from charlm import runtime, storage
from charlm.config import PLACEMENT_TIMEOUT_S
from charlm.errors import CharlmError, first_line

DEFAULT_STEPS = 10


@dataclass
class DoctorOptions:
    use_gpu: bool = False
    gpus: int = 1  # with use_gpu: GPUs brought up (by an autoscaler) before the checks
    storage_path: str | None = None
    json: str | None = None  # where the rows go, local or a URI
    placement_timeout: float = PLACEMENT_TIMEOUT_S
    steps: int = DEFAULT_STEPS  # timed training steps per preset (0: none)
    verbose: bool = False


def _check_options(o: DoctorOptions) -> None:
    if o.placement_timeout <= 0:
        raise CharlmError(f"--placement-timeout is {o.placement_timeout}; give the seconds to "
                          "wait for each node's check, more than 0")
    if o.steps < 0:
        raise CharlmError(f"--steps is {o.steps}; use 0 (no timed steps) or more")
    if o.gpus < 1:
        raise CharlmError(f"--gpus is {o.gpus}; use 1 or more (2 or more also all-reduce)")


def doctor(o: DoctorOptions) -> list[dict]:
    """Check the cluster (or this machine, with an embedded Ray); prints the
    table and `ok`, and returns the rows. Failing nodes: one `error:` line
    each on stderr, then exit status 2."""
    runtime.quiet(o.verbose)
    _check_options(o)
    if o.storage_path:
        storage.check_writable(storage.normalize(o.storage_path), "--storage-path")
    if o.json:
        storage.check_writable(_parent(storage.normalize(o.json)), "--json")
    runtime.init_ray(o.verbose)
    nodes = _alive_nodes()
    if o.use_gpu and sum(gpus for _, _, gpus in nodes) < o.gpus:
        nodes = _gpus_brought_up(o.gpus, sum(gpus for _, _, gpus in nodes),
                                 o.placement_timeout)
    rows = _check_nodes(nodes, o)
    errors = [f"node {row['node']} ({row['node_id'][:12]}): {'; also: '.join(row['problems'])}"
              for row in rows if row["problems"]]
    reduced = None
    on_gpus = [(row["node_id"], len(row["gpus"])) for row in rows
               if o.use_gpu and row.get("gpus") and not row["problems"]]
    if sum(g for _, g in on_gpus) >= 2:
        from charlm.cluster.allreduce import all_reduce

        try:
            reduced = all_reduce(on_gpus, o.placement_timeout, verbose=o.verbose)
        except CharlmError as e:
            errors.append(str(e))
    print(table(rows), flush=True)
    if reduced:
        print(reduced, flush=True)
    if o.json:
        _write_json(o.json, {"rows": rows, "all_reduce": reduced, "errors": errors})
        print(f"rows: {storage.normalize(o.json)}", flush=True)
    if errors:
        for line in errors:
            print(f"error: {line}", file=sys.stderr, flush=True)
        sys.exit(2)
    print("ok", flush=True)
    return rows


def _parent(path: str) -> str:
    return posixpath.dirname(path.rstrip("/")) or "."


def _alive_nodes() -> list[tuple[str, str, int]]:
    """(node id, address, GPUs) of every alive node, by address."""
    import ray

    return sorted(((n["NodeID"], n["NodeManagerAddress"], int(n["Resources"].get("GPU", 0)))
                   for n in ray.nodes() if n["Alive"]), key=lambda n: (n[1], n[0]))


def _gpus_brought_up(count: int, have: int, timeout: float) -> list[tuple[str, str, int]]:
    """With --use-gpu where fewer than `count` GPUs are up: `count` GPUs asked
    for at once within the deadline, which an autoscaler answers with GPU
    nodes (left to its idle timeout); without one, the one line at once."""
    from ray.util.placement_group import placement_group, remove_placement_group

    if not runtime.on_cluster():
        raise CharlmError(f"--use-gpu --gpus {count}, but this machine has {have} GPU(s); "
                          "run on GPU nodes (docs/cluster.md), ask for fewer, or drop --use-gpu")
    if not runtime.can_add_nodes():
        raise CharlmError(f"--use-gpu --gpus {count}, but this Ray cluster has {have} GPU(s) "
                          "and no autoscaler to add more; ask for fewer, or drop --use-gpu")
    group = placement_group([{"GPU": 1}] * count)
    try:
        runtime.get_within(group.ready(), timeout, f"{count} GPU(s)", gpus=True)
    finally:
        remove_placement_group(group)
    return _alive_nodes()


def _check_nodes(nodes: list[tuple[str, str, int]], o: DoctorOptions) -> list[dict]:
    """Every node's row; a check that failed, or did not end within the
    deadline, is a row of its own problem."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from charlm.cluster.node import check_node, unreserved_view

    def pinned(fn, node_id: str, gpus: int):
        return ray.remote(fn).options(
            num_cpus=0, num_gpus=gpus, max_retries=0,
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False))

    refs = [pinned(check_node, node_id, gpus if o.use_gpu else 0)
            .remote(o.use_gpu, o.storage_path, o.steps) for node_id, _, gpus in nodes]
    # With --use-gpu the check holds a GPU node's GPUs: what work without
    # them sees there is asked beside it.
    views = {node_id: pinned(unreserved_view, node_id, 0).remote()
             for node_id, _, gpus in nodes if gpus and o.use_gpu}
    done, _ = ray.wait([*refs, *views.values()], num_returns=len(refs) + len(views),
                       timeout=o.placement_timeout)
    rows = []
    for ref, (node_id, address, gpus) in zip(refs, nodes, strict=True):
        problem = None
        if ref in done:
            try:
                row = ray.get(ref)
                view = views.get(node_id)
                if gpus and view is None:  # the check itself reserved no GPU
                    _hidden(row, row["cuda_visible_devices"])
                elif view is not None and view in done:
                    _hidden(row, ray.get(view))
                rows.append(row)
                continue
            except ray.exceptions.RayError as e:
                problem = f"its check failed ({first_line(e)}); rerun with --verbose"
        else:
            ray.cancel(ref, force=True)
            held = f" and its {gpus} GPU(s)" if o.use_gpu and gpus else ""
            problem = (f"its check did not end within {o.placement_timeout:.0f} s (placed on "
                       f"the node{held} and run); another job may hold them, or raise "
                       "--placement-timeout")
        rows.append({"node": address, "node_id": node_id, "problems": [problem]})
    return rows


def _hidden(row: dict, seen: str | None) -> None:
    """Records what work without GPUs sees on a GPU node: none of its GPUs,
    or the row's problem."""
    row["unreserved_sees"] = seen
    if seen != "":
        shown = "unset" if seen is None else repr(seen)
        row["problems"].append(
            f"work that reserves no GPU sees this node's GPUs (CUDA_VISIBLE_DEVICES={shown}), "
            "so jobs without --use-gpu would compute on them; Ray no longer hides them "
            "as charlm.runtime.worker_env asks: check it against the installed Ray")


COLUMNS = (
    ("node", lambda r: f"{r['node']} ({r['node_id'][:12]})"),
    ("GPUs seen", lambda r: _gpus(r.get("gpus"))),
    ("CUDA_VISIBLE_DEVICES", lambda r: "-" if "cuda_visible_devices" not in r else
     "unset" if r["cuda_visible_devices"] is None else repr(r["cuda_visible_devices"])),
    ("GPUs hidden", lambda r: "-" if "unreserved_sees" not in r else
     "yes" if r["unreserved_sees"] == "" else "no"),
    ("tensorflow", lambda r: f"{r['tensorflow']} ({r['built_for']})" if "tensorflow" in r
     else "-"),
    ("cuDNN wheel", lambda r: r.get("cudnn_wheel") or "-"),
    ("driver", lambda r: f"CUDA {r['driver_cuda']}" if r.get("driver_cuda") else "-"),
    ("LSTM", lambda r: r.get("lstm_kernel", "-")),
    ("seed win/s", lambda r: _count(r.get("windows_per_s", {}).get("seed"))),
    ("gpu win/s", lambda r: _count(r.get("windows_per_s", {}).get("gpu"))),
    ("storage", lambda r: r.get("storage") or "-"),
    ("disk free", lambda r: f"{r['disk_free_gb']} GB" if "disk_free_gb" in r else "-"),
    ("memory free", lambda r: f"{r['memory_free_gb']} GB" if "memory_free_gb" in r else "-"),
    ("status", lambda r: "error" if r["problems"] else "ok"),
)


def _gpus(names: list[str] | None) -> str:
    if names is None:
        return "-"
    return f"{len(names)} {names[0]}" if names else "0"


def _count(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def table(rows: list[dict]) -> str:
    """One line per node under a header, columns padded to their widest cell."""
    cells = [[name for name, _ in COLUMNS]] + [[cell(r) for _, cell in COLUMNS] for r in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip()
                     for line in cells)


def _write_json(path: str, report: dict) -> None:
    fs, p = storage.resolve(path)
    if not storage.is_uri(path):
        fs.create_dir(_parent(p), recursive=True)
    with fs.open_output_stream(p) as f:
        f.write(json.dumps(report, indent=1).encode("utf-8"))
