"""Launch N real peer processes on 127.0.0.1 from a topology, watch them, inject churn, report.

Every peer is ``python -m node --config RUN/peerI.toml`` with its own port, data shard, state
folder and JSON-lines log. The launcher only reads the peers' logs and final summaries (no
control channel: the peers find each other by themselves), and it stops every process it started
when it ends, fails or is interrupted. The loop that does so is node.supervisor's, with the
launcher's churn, join schedule and bootstrap kill plugged in (node.launch_policies); the
summary, the table and the plot are node.launch_report's.

Join mode (``[launch] join``) starts an open-membership network the way one grows in practice:
a few bootstrap peers linked to each other, then the others one by one with ``--join`` and
nothing else, so what is measured is the membership protocol (admission, view, agreed edges,
state transfer), not a topology the launcher wired in advance.

``emit_configs`` writes the configs of a deployment over several machines instead, and starts
nothing.
"""

from __future__ import annotations

import shutil
import socket
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from node.config import LaunchConfig, PeerConfig
from node.launch_policies import choose_victims, launch_policies
from node.launch_report import (
    PLOT_FILE,
    SUMMARY_FILE,
    RunFolder,
    components,
    join_record,
    peer_join_record,
    plot_launch,
    summarise,
    summary_table,
)
from node.peer.keys import provision
from node.schema import dump_toml
from node.supervisor import PeerProcess, ProgressLine, Supervisor, progress_text, stop_all
from node.zygote import Zygote, fork_available

__all__ = [
    "PLOT_FILE", "SUMMARY_FILE", "PeerProcess", "ProgressLine", "RunFolder",
    "bootstrap_urls", "check_join_mode", "choose_victims", "clear_previous_run", "components",
    "emit_configs", "emit_message", "experiment_configs", "free_ports", "join_record", "launch",
    "peer_join_record", "plot_launch", "prepare_peers", "progress_text", "read_hosts",
    "start_peers_by", "stop_all", "summarise", "summary_table", "write_configs",
]


def free_ports(count: int) -> list[int]:
    """Ports the OS reports free on 127.0.0.1 (held open together so they are distinct)."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def write_configs(configs: list[PeerConfig], folder: Path, *, portable: bool = False,
                  headers: Sequence[str] | None = None) -> list[Path]:
    """``folder/peerI.toml`` for each config, after giving every peer an identity: a network
    authority and trust store in ``folder``, a key and a certificate per peer (node.peer.keys);
    so launched peers are authenticated by default. ``portable``: keys and certificates go
    next to the configs (peerI.key, peerI.cert) and the configs name them relative to
    ``folder``, for configs copied to other machines. ``headers``: comment text put at the top
    of each file."""
    folder.mkdir(parents=True, exist_ok=True)
    if portable:
        configs = provision(configs, folder, relative_to=folder,
                            key_path=lambda c: folder / f"peer{c.peer.id}.key",
                            cert_path=lambda c: folder / f"peer{c.peer.id}.cert")
    else:
        configs = provision(configs, folder)
    paths = []
    for k, config in enumerate(configs):
        path = RunFolder(folder).config(config.id)
        path.write_text((headers[k] if headers else "") + dump_toml(config))
        paths.append(path)
    return paths


def read_hosts(path: str | Path, count: int) -> list[tuple[str, int]]:
    """``HOST`` or ``HOST:PORT`` per line; fewer lines than peers are reused round-robin, with
    ports counting up from 8000 (or the line's port) per host."""
    lines = [ln.split("#")[0].strip() for ln in Path(path).read_text().splitlines()]
    hosts = [ln for ln in lines if ln]
    if not hosts:
        raise ValueError(f"--hosts: {path} lists no hosts")
    next_port: dict[str, int] = {}
    addresses = []
    for i in range(count):
        host, _, port = hosts[i % len(hosts)].partition(":")
        base = int(port) if port else 8000
        addresses.append((host, next_port.get(host, base)))
        next_port[host] = next_port.get(host, base) + 1
    return addresses


# -- emitted configs (a deployment over several machines) ------------------------------------


def emit_configs(s: LaunchConfig, folder: str | Path, hosts_file: str | Path, *,
                 joiners: int = 0) -> list[Path]:
    """Per-peer configs for a deployment across machines; starts nothing. Each peer listens on
    the address the hosts file gives it (where its neighbours will reach it), and its state
    folder and log are relative to where it runs. In join mode the joiners' configs name the
    bootstrap peers ([membership] bootstrap), as there is no launcher to pass --join.

    ``joiners``: K more configs, peers N..N+K-1, for peers that join the running network later
    (no neighbours; [membership] bootstrap names the peers to join through). Every peer then
    has open membership (a static peer refuses joiners), and the training split is cut into
    N+K shards, so each joiner trains on a shard of its own. Each file starts with comments
    that say how to run it, whether peers can join and how, and which shard it trains on."""
    if joiners < 0:
        raise ValueError(f"--joiners must be >= 0, got {joiners}")
    addresses = read_hosts(hosts_file, s.graph.nodes + joiners)
    configs = experiment_configs(s, addresses[:s.graph.nodes], Path("state"),
                                 bootstrap_in_config=True)
    if joiners:
        configs = open_to_joiners(s, configs, addresses)
    headers = [emitted_header(s, c, joiners=joiners) for c in configs]
    return write_configs(configs, Path(folder), portable=True, headers=headers)


def open_to_joiners(s: LaunchConfig, configs: list[PeerConfig],
                    addresses: list[tuple[str, int]]) -> list[PeerConfig]:
    """``configs`` with open membership and the data cut into one shard per address, then a
    joiner's config for each address beyond them: no neighbours, [membership] bootstrap naming
    the bootstrap peers (join mode) or every peer, and a shard of its own."""
    nodes, shards = len(configs), len(addresses)
    urls = bootstrap_urls(s, addresses) if s.launch.join else \
        [f"http://{host}:{port}" for host, port in addresses[:nodes]]
    out = []
    for config in configs:
        table = config.explicit()
        table["data"] = {**table.get("data", {}), "num_shards": shards}
        table["membership"] = {**table.get("membership", {}), "dynamic": True}
        out.append(PeerConfig.from_table(table))
    for j in range(nodes, shards):
        out.append(joiner_config(out[0], j, address=addresses[j], urls=urls))
    return out


def joiner_config(template: PeerConfig, j: int, *, address: tuple[str, int], urls: list[str]
                  ) -> PeerConfig:
    """Peer ``j``, a joiner: ``template``'s shared sections, its own address, state folder and
    shard (``j``), no neighbours and no attack, joining through ``urls``."""
    table = template.explicit()
    state = RunFolder(Path("state"))
    table["peer"] = {"id": j, "listen": f"{address[0]}:{address[1]}",
                     "state_dir": str(state.peer(j)), "log_file": str(state.log(j))}
    table["neighbours"] = {}
    table["attack"] = {}
    table["data"] = {**table["data"], "shard": j}
    table["membership"] = {**table["membership"], "dynamic": True, "bootstrap": urls}
    return PeerConfig.from_table(table)


def emitted_header(s: LaunchConfig, config: PeerConfig, *, joiners: int) -> str:
    """The comments at the top of an emitted file: how to run it, whether and how peers can
    join the network, and which part of the data it trains on."""
    i, nodes = config.peer.id, s.graph.nodes
    name = f"peer{i}"
    role = f"Peer {i}, a joiner of a network of {nodes} (start it while the network trains)" \
        if config.membership.bootstrap else f"Peer {i} of a network of {nodes}"
    lines = [f"{role}, written by scripts/launch.py --emit-configs.",
             f"On its machine: python -m node --config {name}.toml, with {name}.key, "
             f"{name}.cert and trust.toml next to this file.",
             *membership_note(s, joiners),
             f"Data: shard {config.data.shard} of {config.data.num_shards} of the training "
             "split ([data] shard, num_shards)."]
    if not joiners:
        lines.append("A peer added by hand trains on the whole split unless given a shard "
                     "(--data-shard I/N); --joiners K gives each joiner one of its own.")
    return "".join(textwrap.fill(line, width=99, initial_indent="# ", subsequent_indent="#   ",
                                 break_on_hyphens=False, break_long_words=False) + "\n"
                   for line in lines) + "\n"


def membership_note(s: LaunchConfig, joiners: int) -> list[str]:
    """What an emitted file (or the message) says about joining the network."""
    nodes = s.graph.nodes
    if not joiners and not s.launch.join:
        return ["Membership is static ([membership] dynamic = false): each peer trains with "
                "its [neighbours] only and no peer can join while the network runs.",
                "To let peers join, emit again with --joiners K (K joiner configs with a key, "
                "a certificate and a data shard each; every peer gets dynamic = true), or set "
                "dynamic = true in every peer's file before the peers start; a new peer then "
                "runs python -m node ... --join URL (docs/peer-config.md, 'Joining')."]
    lines = ["Membership is open ([membership] dynamic = true): peers accept joiners, and each "
             "links to [membership] links peers of its own choosing besides its [neighbours]."]
    if joiners:
        lines.append(f"Joiners: peers {nodes} to {nodes + joiners - 1} (their files name the "
                     "peers to join through in [membership] bootstrap).")
    lines.append("Any other new peer joins with python -m node ... --join URL once it holds a "
                 "certificate of this network's authority (python -m node keys issue "
                 "--authority authority.key ...).")
    return lines


def emit_message(s: LaunchConfig, folder: str | Path, paths: list[Path], *, joiners: int = 0
                 ) -> str:
    """What scripts/launch.py --emit-configs prints: what it wrote, how to run it, and whether
    and how peers can join the network."""
    nodes = s.graph.nodes
    wrote = f"wrote {nodes} peer configs" + (
        f" and {joiners} joiner configs (peer{nodes} to peer{len(paths) - 1})" if joiners else "")
    shards = f"The training split is cut into {len(paths)} shards, one per peer" + \
        (" and joiner." if joiners else ".")
    return " ".join([
        f"{wrote} to {folder}, with a key and a certificate per peer and the trust store; copy "
        "peerI.toml, peerI.key, peerI.cert and trust.toml to machine I and run: python -m node "
        "--config peerI.toml (keep authority.key off the peers: it admits new ones).",
        *membership_note(s, joiners), shards])


# -- the experiment's peers ------------------------------------------------------------------


def check_join_mode(s: LaunchConfig) -> None:
    """ValueError, in one sentence, for join-mode settings that cannot run."""
    c = s.launch
    if not c.join:
        if c.kill_bootstrap_at_round is not None:
            raise ValueError("--kill-bootstrap-at-round needs --join (only join mode has "
                             "bootstrap peers)")
        return
    if c.bootstrap >= s.graph.nodes:
        raise ValueError(f"--bootstrap {c.bootstrap} must be < --nodes {s.graph.nodes} (join "
                         "mode needs at least one peer that joins)")
    if c.kill_bootstrap_at_round is not None and c.kill_bootstrap_at_round >= s.run.rounds:
        raise ValueError(f"--kill-bootstrap-at-round {c.kill_bootstrap_at_round} must be < "
                         f"--rounds {s.run.rounds} (the run would be over)")
    if s.graph.file is not None:
        raise ValueError("--graph does not combine with --join (the joiners pick their "
                         "neighbours from the view)")


def bootstrap_urls(s: LaunchConfig, addresses: list[tuple[str, int]]) -> list[str]:
    return [f"http://{host}:{port}" for host, port in addresses[:s.launch.bootstrap]]


def experiment_configs(s: LaunchConfig, addresses: list[tuple[str, int]], run_dir: Path, *,
                       bootstrap_in_config: bool = False) -> list[PeerConfig]:
    """The peers' configs: from [graph] topology, or in join mode the bootstrap peers linked to
    each other and the joiners with no neighbours, every peer with open membership (a joiner
    accepts later joiners too). ``bootstrap_in_config``: the joiners' configs name the
    bootstrap URLs (for emitted configs; the launcher passes --join instead, which shows each
    process's role on its command line)."""
    check_join_mode(s)
    if not s.launch.join:
        return s.peer_configs(addresses, run_dir)
    # only the shared sections, shards and addresses of peer_configs are wanted: a complete
    # graph builds for any size (the topology asked for might not, and does not apply)
    flat = s.model_copy(update={"graph": s.graph.model_copy(update={
        "topology": "complete", "file": None, "max_degree": None})})
    urls = bootstrap_urls(s, addresses)
    configs = []
    for config in flat.peer_configs(addresses, run_dir):
        table = config.explicit()
        i = config.id
        boot = i < s.launch.bootstrap
        table["neighbours"] = {str(j): url for j, url in enumerate(urls) if j != i} if boot \
            else {}
        table["membership"] = {**table.get("membership", {}), "dynamic": True,
                               **({"bootstrap": urls} if bootstrap_in_config and not boot
                                  else {})}
        configs.append(PeerConfig.from_table(table))
    return configs


def clear_previous_run(run_dir: Path) -> None:
    """Remove an earlier launch in ``run_dir`` (its peers would otherwise resume from their
    checkpoints); refuse a non-empty folder that is not a launcher run."""
    if not run_dir.exists() or not any(run_dir.iterdir()):
        return
    folder = RunFolder(run_dir)
    if not folder.config(0).exists():
        raise ValueError(f"--out {run_dir} is not empty and holds no earlier launch; pick a "
                         "new folder")
    for path in [*run_dir.glob("peer*"), folder.summary, folder.plot]:
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    print(f"cleared the earlier run in {run_dir}", file=sys.stderr)


def start_peers_by(s: LaunchConfig, configs: list[PeerConfig]) -> Zygote | None:
    """The zygote that forks the peers ([launch] start_method fork, or auto on Linux), having
    loaded their data once; None when each peer is a new interpreter (exec)."""
    method = s.launch.start_method
    # A forked peer that runs torch on several threads deadlocks if the parent ever started
    # torch's OpenMP pool (its threads are not copied, their locks are: found in review). The
    # launcher's own process never computes before forking, but launch() called from a
    # program that did cannot tell; one-thread peers never touch the pool, so only they fork.
    threaded = s.run.threads > 1
    if method == "auto":
        method = "fork" if fork_available() and not threaded else "exec"
    if method == "exec":
        return None
    if not fork_available():
        raise ValueError("--start-method fork needs Linux (os.fork and PR_SET_PDEATHSIG); use "
                         "--start-method exec")
    if threaded:
        raise ValueError(f"--start-method fork needs --threads 1 (got {s.run.threads}): a "
                         "forked peer running torch on several threads can deadlock; use "
                         "--start-method exec")
    return Zygote(configs)


def prepare_peers(s: LaunchConfig, run_dir: Path, *, fork: bool = True
                  ) -> tuple[list[PeerProcess], list[PeerConfig], Zygote | None]:
    """The run's peers, not started yet: their configs written to ``run_dir`` with free ports
    on 127.0.0.1, the zygote that forks them (``fork``: as [launch] start_method says; else
    none, every peer a new interpreter), and in join mode their roles and --join URLs."""
    addresses = [("127.0.0.1", port) for port in free_ports(s.graph.nodes)]
    configs = experiment_configs(s, addresses, run_dir)
    paths = write_configs(configs, run_dir)
    zygote = start_peers_by(s, configs) if fork else None
    peers = [PeerProcess(path, Path(c.peer.log_file), Path(c.peer.state_dir), zygote=zygote)
             for path, c in zip(paths, configs, strict=True)]
    if s.launch.join:
        urls = bootstrap_urls(s, addresses)
        for i, p in enumerate(peers):
            boot = i < s.launch.bootstrap
            p.role, p.join_urls = ("bootstrap", []) if boot else ("joiner", urls)
    return peers, configs, zygote


def launch(s: LaunchConfig) -> dict[str, Any]:
    """Run the whole experiment; returns (and writes) the summary. Ctrl-C (or SIGTERM) stops
    every peer and still writes the summary, the table's data and the plot of what was done,
    marked ``interrupted``; past [launch] timeout every peer is stopped and TimeoutError
    raised."""
    check_join_mode(s)
    run_dir = Path(s.out).resolve()  # the peers' configs name their folders absolutely
    clear_previous_run(run_dir)
    peers, _, zygote = prepare_peers(s, run_dir)
    victims = choose_victims(s)
    run = Supervisor(peers, launch_policies(s, peers, victims), rounds=s.run.rounds,
                     timeout=s.launch.timeout, quiet=s.run.quiet, zygote=zygote).run()
    if run.timed_out:
        raise TimeoutError(f"run exceeded --timeout {s.launch.timeout}s")
    return summarise(s, peers, run_dir=run_dir, wall=run.elapsed(), victims=victims,
                     interrupted=run.interrupted)
