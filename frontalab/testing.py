"""Test harness: a real multi-node Ray cluster on this machine (`LocalCluster`), for tests, demos and
`frontalab cluster`; no production path uses it (`frontalab.compute` connects to any cluster).

`LocalCluster` starts a real multi-node Ray cluster on this machine for tests and demos: a head
and N worker nodes, each its own ``ray start`` on 127.0.0.1 with its own ports, CPUs and a custom
resource naming it (``node_head``, ``node_w1``, ...). Every process a node starts (GCS, raylet,
agents, and later the trial workers the raylet spawns) inherits one environment variable,
``FRONTALAB_RAY_NODE=<cluster id>/<node>``; the cluster finds its processes by that marker in
``/proc/PID/environ``, kills one node's processes by PID (to simulate a lost machine), and
stops everything it started by PID. It never runs ``ray stop``, which would kill every Ray
instance on the machine, other users' included.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

from frontalab.compute import STATE_FILE, TOKEN_FILE, local_cluster_dir, token_auth_env
from frontalab.services.processes import alive, cmdline, kill_pids, pids_with_env, port_free, start_time

MARKER_ENV = "FRONTALAB_RAY_NODE"
_WORKER_PORTS_PER_NODE = 40


def _free_ports(n: int, taken: set[int]) -> list[int]:
    """``n`` distinct ports that nothing listens on now (outside Linux's ephemeral range, so a
    client socket cannot grab one before Ray binds it)."""
    out: list[int] = []
    while len(out) < n:
        port = random.randint(11000, 29999)
        if port not in taken and port not in out and port_free("127.0.0.1", port, strict=True):
            out.append(port)
    return out


def _free_range(n: int, taken: set[int]) -> tuple[int, int]:
    """A block of ``n`` consecutive free ports."""
    for _ in range(200):
        base = random.randint(11000, 29999 - n)
        block = range(base, base + n)
        if not taken.intersection(block) and all(port_free("127.0.0.1", p, strict=True) for p in block):
            return base, base + n - 1
    raise RuntimeError(f"no {n} consecutive free ports found")


@dataclass
class Node:
    name: str                      # "head", "w1", "w2", ...
    head: bool
    num_cpus: int
    ports: dict[str, int]
    resources: dict[str, float]
    pids: list[int] = field(default_factory=list)          # recorded right after `ray start`
    start_times: dict[str, int] = field(default_factory=dict)
    node_id: str = ""              # Ray's node id (hex), from the raylet's --node_id flag
    killed: bool = False


class LocalCluster:
    """A Ray head plus ``workers`` worker nodes on this machine, as separate ``ray start`` processes.

    ``env`` is added to every node's environment (all Ray processes and trial workers inherit it):
    pass the services' `client_env` so trials find MLflow and S3. Use as a context manager, or
    `start()` / `stop()`. ``state_dir`` (default ``$FRONTALAB_HOME/ray-cluster``) receives
    ``cluster.json`` (address, ports, PIDs; no secrets) and the nodes' logs.
    """

    def __init__(self, workers: int = 1, cpus_per_node: int = 1, *, head_cpus: Optional[int] = None,
                 env: Optional[dict[str, str]] = None, state_dir: Optional[str | Path] = None,
                 object_store_mb: int = 256, cluster_id: Optional[str] = None):
        self.workers = workers
        self.cpus_per_node = cpus_per_node
        self.head_cpus = cpus_per_node if head_cpus is None else head_cpus
        self.env = dict(env or {})
        self.state_dir = Path(state_dir) if state_dir else local_cluster_dir()
        self.object_store_mb = object_store_mb
        self.id = cluster_id or uuid.uuid4().hex[:10]
        # Short: Ray's unix sockets live below it and must stay under ~107 characters.
        self.temp_dir = Path(f"/tmp/frl-ray-{self.id}")
        self.nodes: list[Node] = []
        self.address = ""
        self.node_ip = ""

    # ------------------------------------------------------------ start

    def marker(self, node: str) -> str:
        return f"{self.id}/{node}"

    @property
    def token_file(self) -> Path:
        return self.state_dir / TOKEN_FILE

    def driver_env(self) -> dict[str, str]:
        """What a driver (``frontalab sweep --address``) needs besides the address: Ray's token
        authentication is on, with this cluster's own token (a file, never in the environment)."""
        return token_auth_env(self.state_dir)

    def _write_token(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        if not self.token_file.exists():
            fd = os.open(self.token_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32))

    def _node_env(self, node: str) -> dict[str, str]:
        env = {**os.environ, **self.env, **self.driver_env(), MARKER_ENV: self.marker(node),
               "RAY_USAGE_STATS_ENABLED": "0"}
        env.pop("RAY_AUTH_TOKEN", None)
        env.pop("RAY_ADDRESS", None)
        # The `ray` next to this interpreter, and its Python for workers.
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        return env

    def _plan(self, name: str, head: bool, cpus: int, taken: set[int]) -> Node:
        keys = ["node_manager", "object_manager", "metrics", "agent_listen", "agent_grpc", "runtime_env_agent"]
        if head:
            keys += ["gcs", "dashboard"]  # the head's dashboard process runs even without the UI
        ports = dict(zip(keys, _free_ports(len(keys), taken)))
        taken.update(ports.values())
        lo, hi = _free_range(_WORKER_PORTS_PER_NODE, taken)
        taken.update(range(lo, hi + 1))
        ports.update(min_worker=lo, max_worker=hi)
        return Node(name=name, head=head, num_cpus=cpus, ports=ports, resources={f"node_{name}": 1.0})

    def _argv(self, node: Node) -> list[str]:
        p = node.ports
        argv = [str(Path(sys.executable).parent / "ray"), "start", "--node-ip-address=127.0.0.1",
                f"--num-cpus={node.num_cpus}", "--num-gpus=0", f"--resources={json.dumps(node.resources)}",
                f"--node-manager-port={p['node_manager']}", f"--object-manager-port={p['object_manager']}",
                f"--min-worker-port={p['min_worker']}", f"--max-worker-port={p['max_worker']}",
                f"--metrics-export-port={p['metrics']}", f"--dashboard-agent-listen-port={p['agent_listen']}",
                f"--dashboard-agent-grpc-port={p['agent_grpc']}", f"--runtime-env-agent-port={p['runtime_env_agent']}",
                f"--object-store-memory={self.object_store_mb * 1024 * 1024}", "--disable-usage-stats",
                "--log-style=record", "--log-color=false"]
        if node.head:
            argv += ["--head", f"--port={p['gcs']}", "--include-dashboard=false",
                     f"--dashboard-port={p['dashboard']}", f"--temp-dir={self.temp_dir}"]
        else:
            argv += [f"--address={self.address}"]
        return argv

    def _ray_start(self, node: Node, timeout: float) -> str:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        log = self.state_dir / f"{node.name}.log"
        with open(log, "ab") as out:
            out.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(self._argv(node))}\n".encode())
        proc = subprocess.run(self._argv(node), env=self._node_env(node.name), stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=timeout, start_new_session=True,
                              cwd=str(self.state_dir))
        with open(log, "a") as out:
            out.write(proc.stdout + proc.stderr)
        if proc.returncode != 0:
            raise RuntimeError(f"`ray start` for node {node.name} failed ({proc.returncode}); see {log}:\n"
                               f"{(proc.stdout + proc.stderr)[-3000:]}")
        self._record(node)
        return proc.stdout + proc.stderr

    def _record(self, node: Node) -> None:
        found = pids_with_env(MARKER_ENV, self.marker(node.name))
        node.pids = sorted(found)
        node.start_times = {str(p): t for p in node.pids if (t := start_time(p)) is not None}
        for pid in node.pids:
            cmd = cmdline(pid)
            if cmd and Path(cmd[0]).name == "raylet":
                for arg in cmd:
                    if arg.startswith("--node_id="):
                        node.node_id = arg.split("=", 1)[1]

    def start(self, timeout: float = 120.0) -> "LocalCluster":
        taken: set[int] = set()
        self._write_token()
        self.nodes = [self._plan("head", True, self.head_cpus, taken)]
        self.nodes += [self._plan(f"w{i}", False, self.cpus_per_node, taken) for i in range(1, self.workers + 1)]
        try:
            head = self.nodes[0]
            out = self._ray_start(head, timeout)
            m = re.search(r"Local node IP[:=]\s*'?([0-9.]+)", out)
            self.node_ip = m.group(1) if m else "127.0.0.1"
            # GCS listens on all interfaces; 127.0.0.1 reaches it and survives a change of the machine's IP.
            self.address = f"127.0.0.1:{head.ports['gcs']}"
            for node in self.nodes[1:]:
                self._ray_start(node, timeout)
            self._wait_nodes(timeout)
        except BaseException:
            self.stop()
            raise
        self.save()
        return self

    def _wait_nodes(self, timeout: float) -> None:
        """Until every node's raylet has registered with the GCS (its node id known)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for node in self.nodes:
                if not node.node_id:
                    self._record(node)
            if all(n.node_id for n in self.nodes):
                return
            time.sleep(0.5)
        missing = [n.name for n in self.nodes if not n.node_id]
        raise RuntimeError(f"Ray nodes {missing} did not start a raylet within {timeout:.0f} s")

    def __enter__(self) -> "LocalCluster":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # ------------------------------------------------------------ processes

    def node(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(f"no node {name!r}; nodes: {[n.name for n in self.nodes]}")

    def pids(self, node: Optional[str] = None) -> dict[int, str]:
        """Live processes of this cluster (or one node) now: pid -> node name. Includes the trial
        workers each raylet started since, found by the inherited marker."""
        if node is not None:
            return {p: node for p in pids_with_env(MARKER_ENV, self.marker(node))}
        return {p: v.split("/", 1)[1] for p, v in pids_with_env(MARKER_ENV, prefix=f"{self.id}/").items()}

    def node_ids(self) -> dict[str, str]:
        return {n.name: n.node_id for n in self.nodes}

    def kill_node(self, name: str, sig: int = signal.SIGKILL, timeout: float = 10.0) -> set[int]:
        """Kill every process of one node by PID (default SIGKILL: a machine lost). Returns the PIDs."""
        node = self.node(name)
        pids = set(self.pids(name)) | {p for p in node.pids if alive(p)}
        left = kill_pids(pids, sig, marker=(MARKER_ENV, self.marker(name)), timeout=timeout)
        if left:
            raise RuntimeError(f"processes {sorted(left)} of node {name} survived signal {sig}")
        node.killed = True
        self.save()
        return pids

    def stop(self, timeout: float = 3.0) -> set[int]:
        """Stop every process this cluster started, by PID: SIGTERM, then SIGKILL after ``timeout``
        (GCS, raylet and agents often ignore SIGTERM for 15 s or more; nothing here needs a clean exit).
        Workers first, the head (GCS) last. Returns the PIDs that were signalled."""
        signalled: set[int] = set()
        order = [n.name for n in self.nodes if not n.head] + ["head"]
        for name in order:
            pids = set(self.pids(name))
            if not pids:
                continue
            signalled |= pids
            left = kill_pids(pids, signal.SIGTERM, marker=(MARKER_ENV, self.marker(name)), timeout=timeout)
            if left:
                kill_pids(left, signal.SIGKILL, marker=(MARKER_ENV, self.marker(name)), timeout=5.0)
        # Anything left with our marker (a worker that outlived its raylet) goes too.
        rest = set(self.pids())
        if rest:
            signalled |= rest
            kill_pids(rest, signal.SIGKILL, timeout=5.0)
        shutil.rmtree(self.temp_dir, ignore_errors=True)
        for leftover in (self.state_dir / STATE_FILE, self.token_file):
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()
        return signalled

    # ------------------------------------------------------------ state

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "address": self.address, "node_ip": self.node_ip, "temp_dir": str(self.temp_dir),
                "state_dir": str(self.state_dir), "object_store_mb": self.object_store_mb,
                "marker_env": MARKER_ENV, "nodes": [asdict(n) for n in self.nodes]}

    def save(self) -> Path:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        path = self.state_dir / STATE_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=1))
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, state_dir: Optional[str | Path] = None) -> Optional["LocalCluster"]:
        """The cluster recorded under ``state_dir`` (default ``$FRONTALAB_HOME/ray-cluster``), or None."""
        folder = Path(state_dir) if state_dir else local_cluster_dir()
        try:
            data = json.loads((folder / STATE_FILE).read_text())
        except (FileNotFoundError, ValueError):
            return None
        c = cls(workers=len(data["nodes"]) - 1, state_dir=folder, object_store_mb=data.get("object_store_mb", 256),
                cluster_id=data["id"])
        c.address, c.node_ip, c.temp_dir = data["address"], data.get("node_ip", ""), Path(data["temp_dir"])
        c.nodes = [Node(**n) for n in data["nodes"]]
        return c

    def status(self) -> dict[str, Any]:
        live = self.pids()
        nodes = []
        for n in self.nodes:
            pids = sorted(p for p, name in live.items() if name == n.name)
            nodes.append({"name": n.name, "head": n.head, "cpus": n.num_cpus, "resources": n.resources,
                          "node_id": n.node_id, "alive": bool(pids), "pids": pids, "killed": n.killed})
        return {"id": self.id, "address": self.address, "node_ip": self.node_ip, "running": bool(live),
                "driver_env": self.driver_env(), "nodes": nodes, "state_file": str(self.state_dir / STATE_FILE)}
