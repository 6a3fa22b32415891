"""Every setting of the project, declared once (the machinery is in ``node.schema``).

Three tools read these sections; the same section names mean the same things everywhere:

============  ==========================================================  ==================
section       what it holds                                               used by
============  ==========================================================  ==================
[data]        data set, partition, shard                                  peer, sim, launch
[model]       model and its size                                          peer, sim, launch
[algorithm]   algorithm, local optimizer, final merge                     peer, sim, launch
[gossip]      codec, message size limit, deadlines                        peer, sim, launch
[mixing]      mixing rule and initial model                               peer, sim, launch
[attack]      adversarial behaviour (and, for experiments, placement)     peer, sim, launch
[run]         seed, rounds, evaluation, threads                           peer, sim, launch
[membership]  open membership: bootstrap, view, links, joiners, leaving   peer, sim, launch
[peer]        this peer's id, address, state folder, log                  peer
[neighbours]  peer id = URL                                               peer
[graph]       number of peers, topology, relays                           sim, launch
[sim]         engine and output folder                                    sim
[launch]      output folder, churn, join mode, time limit                 launch
[trust]       key, certificate, trust store                               peer
[tls]         TLS certificate, key, CA                                    peer
============  ==========================================================  ==================

A file may hold sections of several tools (each tool ignores the sections that are not its own),
so one file can describe an experiment and the peers in it. Every key is documented in
docs/peer-config.md (peer) and by ``--help`` (all tools).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, ClassVar

from pydantic import Field, field_validator, model_validator

from gossip import CODECS
from mixing import MIXING_NAMES, SybilWall, VarianceCorrected
from node.learning import (
    ALGORITHM_NAMES,
    ATTACKS,
    BUFFER_MODES,
    DATASETS,
    INITS,
    MODELS,
    PARTITIONS,
    Algorithm,
    Attack,
    Dataset,
    Learner,
    TrainConfig,
    choose_adversaries,
    derive_seed,
    make_attack,
    make_learner,
    resolve_algorithm,
)
from node.learning.data import DIGITS_SPLIT_SEED, load_dataset, split_off, user_dataset
from node.learning.files import FORMATS, read_file
from node.learning.plugins import (
    DATASET_GROUP,
    MODEL_GROUP,
    import_object,
    load_plugin,
    plugin_names,
)
from node.schema import (
    ALL_SECTIONS,
    CONFIGS,
    Config,
    ConfigError,
    OneOf,
    Section,
    setting,
)
from topology import TOPOLOGY_NAMES, Topology, TopologyError, build_topology

ENGINES = ("reference", "batched", "peers")
PEER_LOG = "log.jsonl"  # a peer's JSON-lines log in its state folder, unless [peer] log_file
EXPERIMENT = ("sim", "launch")


def _names(registry: Any):
    return lambda: tuple(registry)


def _dataset_names() -> tuple[str, ...]:
    return tuple(DATASETS) + plugin_names(DATASET_GROUP)


def _model_names() -> tuple[str, ...]:
    return tuple(MODELS) + plugin_names(MODEL_GROUP)


class DataSection(Section):
    """Where a peer's training data comes from: a data set by name, a user's loader function,
    or a file in a known format (the first of format, loader, dataset that is given)."""

    dataset: Annotated[str, OneOf(_dataset_names)] = setting(
        "digits", "data set by name: digits (bundled with scikit-learn), synthetic (LEAF), or "
        "one an installed package registers (entry points 'decent.datasets')")
    loader: str | None = setting(None, "a function 'module.path:function' returning the "
                                 "training set, or (train, validation, test), as torch "
                                 "Datasets or (x, y) tensors; [data.options] are its keyword "
                                 "arguments", metavar="MODULE:FUNCTION")
    options: dict[str, Any] = setting({}, "keyword arguments of the loader or the plugin "
                                      "data set ([data.options] table)")
    format: Annotated[str | None, OneOf(lambda: FORMATS)] = setting(
        None, "a file you have: csv (header row; label names the label column), npz (arrays "
        "x and y), imagefolder (a sub-folder per class), mnist (IDX files), cifar10 (python "
        "batches); read from path")
    path: str | None = setting(None, "the file or folder for format", path=True,
                               metavar="PATH")
    label: str | None = setting(None, "csv: the label column", metavar="COLUMN")
    test_path: str | None = setting(None, "a shared test set in the same format (every peer "
                                    "scores its 'accuracy' on it)", path=True, metavar="PATH")
    # The validation settings are the peer's (each real peer scores 'val_accuracy' on its own
    # data); the simulator accepts them, so that one file serves all three tools, and scores
    # every peer on the shared test set only.
    validation_fraction: float = setting(0.0, "fraction of the peer's own training data held "
                                         "out as its validation set ('val_accuracy'; real "
                                         "peers only)", ge=0, lt=1)
    validation_path: str | None = setting(None, "the peer's validation set, in the same format "
                                          "(real peers only)", path=True, metavar="PATH")
    partition: Annotated[str, OneOf(_names(PARTITIONS))] = setting(
        "iid", "how the training split is cut among peers; natural keeps the synthetic "
        "generator's per-peer parts")
    alpha: float = setting(0.5, "Dirichlet concentration (smaller: more heterogeneous)", gt=0)
    classes_per_node: int = setting(2, "classes per peer for partition = shards", ge=1)
    test_fraction: float = setting(0.25, "digits: held-out fraction of the fixed stratified "
                                   "split", gt=0, lt=1)
    synthetic_alpha: float = setting(1.0, "LEAF synthetic(alpha, beta): model heterogeneity",
                                     ge=0)
    synthetic_beta: float = setting(1.0, "LEAF synthetic(alpha, beta): data heterogeneity",
                                    ge=0)
    shard: int = setting(0, "which part of the split this peer trains on (0..num_shards-1)",
                         ge=0, tools=("peer",))
    num_shards: int = setting(1, "how many parts the training split is cut into (usually the "
                              "number of peers)", ge=1, tools=("peer",))

    @model_validator(mode="after")
    def _shard_in_range(self) -> DataSection:
        if self.shard >= self.num_shards:
            raise ValueError(f"shard must be in 0..num_shards-1 "
                             f"({self.num_shards - 1}), got {self.shard}")
        if (self.format is None) != (self.path is None):
            raise ValueError("format and path go together: format names how to read path")
        if self.format == "csv" and self.label is None:
            raise ValueError("label must name the label column of the csv file")
        if self.validation_fraction > 0 and self.validation_path is not None:
            raise ValueError("give validation_fraction or validation_path, not both")
        if self.format is None and (self.test_path or self.validation_path):
            raise ValueError("test_path and validation_path are read in [data] format: set it")
        return self

    @property
    def source(self) -> str:
        """What the data is, in words (for logs and summaries)."""
        if self.format:
            return f"{self.format} file {self.path}"
        if self.loader:
            return f"loader {self.loader}"
        return f"data set {self.dataset}"

    def load(self, *, num_nodes: int, seed: int, import_path: Sequence[str] = (),
             hold_out_test: bool = True) -> Dataset:
        """The data this section names. A user source without a test set gets one held out
        (``test_fraction``, a fixed seed, as digits) when ``hold_out_test`` (experiments: every
        peer is scored on the same images); an edge peer on its own files has none unless
        ``test_path`` names one."""
        if self.format is None and self.loader is None and self.dataset in DATASETS:
            return load_dataset(self, num_nodes=num_nodes, seed=seed)
        test = read_file(self.format or "", self.test_path, label=self.label) \
            if self.test_path else None
        if self.format is not None and self.path is not None:  # they go together (checked)
            result: Any = read_file(self.format, self.path, label=self.label)
            where = f"[data] path {self.path}"
        else:
            where = f"[data] loader {self.loader}" if self.loader else \
                f"[data] dataset {self.dataset}"
            fn = import_object(self.loader, where="[data] loader", import_path=import_path) \
                if self.loader else load_plugin(DATASET_GROUP, self.dataset)
            if fn is None:  # the name was checked against the installed ones; gone since
                raise ValueError(f"{where}: no installed package registers it")
            try:
                result = fn(**self.options)
            except Exception as exc:  # the user's function failed: say where, keep the reason
                raise ValueError(f"{where} failed: {type(exc).__name__}: {str(exc)[:200]}"
                                 ) from None
        data = user_dataset(self.source, result, where, test=test)
        if not data.has_test and hold_out_test:
            (x, y), (xt, yt) = split_off(data.x_train, data.y_train,
                                         fraction=self.test_fraction, seed=DIGITS_SPLIT_SEED)
            data.x_train, data.y_train, data.x_test, data.y_test = x, y, xt, yt
        return data

class ModelSection(Section):
    """The model every peer trains (the same architecture on all peers): a built-in or
    installed one by name, or a user's factory function."""

    name: Annotated[str, OneOf(_model_names)] = setting(
        "mlp", "model by name: mlp, cnn, logreg, or one an installed package registers (entry "
        "points 'decent.models')", flag="--model")
    factory: str | None = setting(None, "a function 'module.path:function' returning a "
                                  "torch.nn.Module; [model.options] are its keyword arguments",
                                  metavar="MODULE:FUNCTION")
    options: dict[str, Any] = setting({}, "keyword arguments of the factory or the named "
                                      "model ([model.options] table)")
    hidden: int = setting(64, "MLP hidden width", ge=1)
    buffers: Annotated[str, OneOf(lambda: BUFFER_MODES)] = setting(
        "average", "BatchNorm statistics and other float buffers: average (mixed with the "
        "weights), local (each peer keeps its own), recalibrate (local, re-estimated on local "
        "data after the final merge)")

    def factory_function(self, import_path: Sequence[str] = ()) -> Any:
        """The user's factory, an installed model's, or None for a built-in."""
        if self.factory:
            return import_object(self.factory, where="[model] factory", import_path=import_path)
        if self.name not in MODELS:
            return load_plugin(MODEL_GROUP, self.name)
        return None


class AlgorithmSection(Section):
    """The algorithm (its local steps K, SAM radius rho, gossip steps Q) and the local
    optimizer; docs/algorithms.md sections 1 and 2."""

    name: Annotated[str, OneOf(_names(ALGORITHM_NAMES))] = setting(
        "dsgd", "dsgd: 1 SGD step + 1 gossip step; dfedavg: K SGD steps; dfedsam: K SAM "
        "steps; dfedsam-mgs: K SAM steps + Q gossip steps", flag="--algorithm")
    local_steps: int | None = setting(None, "local steps K per round (default: 1 for dsgd, "
                                      "5 otherwise)", ge=1)
    gossip_steps: int | None = setting(None, "gossip steps Q per round, dfedsam-mgs "
                                       "(default: 4)", ge=0)
    rho: float | None = setting(None, "SAM radius, dfedsam and dfedsam-mgs (default: 0.05)",
                                ge=0)
    lr: float = setting(0.05, "learning rate, times lr_decay ** round", gt=0)
    lr_decay: float = setting(0.998, "per-round learning-rate factor", gt=0)
    momentum: float = setting(0.9, "local momentum (the buffer is never sent)", ge=0, lt=1)
    dampening: float = setting(0.0, "momentum dampening; = momentum gives MoNNA's "
                               "m = b m + (1 - b) g", ge=0, lt=1)
    weight_decay: float = setting(5e-4, "L2 weight decay", ge=0)
    batch_size: int = setting(16, "minibatch size", ge=1)
    final_merge: bool = setting(True, "end with the exact global merge of every connected "
                                "component")

    @model_validator(mode="after")
    def _algorithm_fits(self) -> AlgorithmSection:
        try:
            self.resolve()
        except ValueError as exc:
            raise ValueError(str(exc)) from None
        return self

    def resolve(self) -> Algorithm:
        """(K, rho, Q) of this algorithm with its defaults filled in."""
        return resolve_algorithm(self.name, local_steps=self.local_steps, rho=self.rho,
                                 gossip_steps=self.gossip_steps)

    def train_config(self) -> TrainConfig:
        """The local optimizer's settings (``node.learning.TrainConfig``)."""
        algorithm = self.resolve()
        return TrainConfig(lr=self.lr, lr_decay=self.lr_decay, momentum=self.momentum,
                           dampening=self.dampening, weight_decay=self.weight_decay,
                           batch_size=self.batch_size, local_steps=algorithm.local_steps,
                           rho=algorithm.rho)


class GossipSection(Section):
    """The wire and the round protocol's waits (real peers, the launcher, --engine peers)."""

    codec: Annotated[str, OneOf(_names(CODECS))] = setting(
        "f32", "tensor codec of every model sent (f32 exact; f16, bf16, q8 lossy)")
    max_message_bytes: int = setting(64 * 2**20, "largest message body accepted", ge=1024)
    deadline_floor_s: float = setting(1.0, "shortest wait for a gossip step's messages", gt=0)
    deadline_ceiling_s: float = setting(10.0, "longest wait for a gossip step's messages "
                                        "(also each merge step's)", gt=0)
    deadline_factor: float = setting(3.0, "a step waits factor x the smoothed time its "
                                     "neighbours took, within floor and ceiling", ge=1)
    startup_timeout_s: float = setting(60.0, "how long the first rendezvous waits for "
                                       "neighbours that are still starting", gt=0)
    max_abs_value: float = setting(1e8, "received vectors with a value beyond +-this are "
                                   "refused (422): a finite 3.4e38 would overflow the average",
                                   gt=0)
    max_messages_per_s: float = setting(200.0, "messages accepted per neighbour per second "
                                        "(a burst of two seconds' worth; beyond: 429)", gt=0)
    inbox_per_sender: int = setting(64, "messages buffered per neighbour for steps not "
                                    "collected yet (beyond: 429)", ge=1)

    @model_validator(mode="after")
    def _floor_below_ceiling(self) -> GossipSection:
        if self.deadline_floor_s > self.deadline_ceiling_s:
            raise ValueError("deadline_floor_s must be <= deadline_ceiling_s "
                             f"({self.deadline_ceiling_s}), got {self.deadline_floor_s}")
        return self


class MixingSection(Section):
    """How a peer combines what it received (``mixing.make_rule``), docs/algorithms.md
    sections 3, 4 and 7, and the initial model."""

    name: Annotated[str, OneOf(lambda: MIXING_NAMES)] = setting(
        "average", "mixing rule; foolsgold is SybilWall without history gossip, multi-krum "
        "averages the n-f best Krum scores", flag="--mixing")
    byzantine_f: int = setting(1, "inputs a robust rule tolerates: trimmed-mean trims f per "
                               "side, krum/multi-krum/nna drop f", ge=0)
    clip_radius: float | None = setting(None, "clipped-gossip radius tau (default: adaptive, "
                                        "the second-largest neighbour distance)", gt=0)
    vc_own_weight: float | None = setting(None, "variance-corrected: own weight c in c own + "
                                          "(1-c) mean(received) (default: Metropolis weights)",
                                          ge=0, le=1)
    vc_target: Annotated[str, OneOf(lambda: VarianceCorrected.TARGETS)] = setting(
        "others", "variance-corrected target variance")
    history_mode: Annotated[str, OneOf(lambda: SybilWall.HISTORY_MODES)] = setting(
        "rounds", "sybilwall/foolsgold history: rounds compares the models of one round centred "
        "on their median (weight 0 for near-copies, docs/algorithms.md 4.3); latest (the "
        "authors' code) and sum of updates (FoolsGold) use the authors' scores")
    history_decay: float = setting(0.8, "sybilwall: a history d hops away is gossiped with "
                                   "weight decay exp(-decay (d-1))", gt=0)
    init: Annotated[str, OneOf(lambda: INITS)] = setting(
        "shared", "shared: one initial model for all peers; independent: one per peer")

    def options(self) -> dict[str, Any]:
        """Keyword arguments of ``mixing.make_rule`` besides the rule's name."""
        return {"f": self.byzantine_f, "radius": self.clip_radius,
                "own_weight": self.vc_own_weight, "target": self.vc_target,
                "history_mode": self.history_mode, "decay": self.history_decay}


class AttackSection(Section):
    """Adversarial behaviour, docs/algorithms.md sections 4.6 and 7.3. In a peer's config
    ``kind`` makes that peer the adversary; in an experiment, ``adversaries`` or ``phi`` say
    where the adversaries are."""

    kind: Annotated[str | None, OneOf(lambda: ATTACKS)] = setting(
        None, "label-flip swaps classes 0 and 1, backdoor adds a 3x3 trigger labelled 1, noise "
        "sends x + scale N(0, I), sign-flip sends -scale x; sybil-noise and sybil-slices are "
        "label-flipping Sybils whose identities add their own noise x + scale N(0, I) or train "
        "on their own slice of the poisoned data", flag="--attack")
    scale: float | None = setting(None, "strength: the noise's std (noise, sybil-noise), or "
                                  "sign-flip's factor (default: 100, 0.01 and 1)", gt=0,
                                  flag="--attack-scale")
    slices: int | None = setting(None, "sybil-slices: disjoint parts of the poisoned data, "
                                 "identity k trains on part k mod slices (default: one per "
                                 "identity)", ge=1, tools=("sim",))
    adversaries: int = setting(0, "K adversarial peers placed at random", ge=0,
                               tools=EXPERIMENT)
    sybils: int | None = setting(None, "S Sybil identities of one adversary, attached by "
                                 "SybilWall's spread rule (default: clusters of 7)", ge=1,
                                 tools=("sim",))
    phi: float | None = setting(None, "attack edges per honest peer for the Sybils", gt=0,
                                tools=("sim",))

    @model_validator(mode="after")
    def _placement(self) -> AttackSection:
        placed = self.adversaries > 0 or self.phi is not None
        if self.kind is None:
            if placed or self.sybils is not None or self.scale is not None or \
                    self.slices is not None:
                raise ValueError("adversaries/sybils/phi/scale need kind "
                                 f"(--attack, one of: {', '.join(ATTACKS)})")
            return self
        if ATTACKS[self.kind].per_identity and self.phi is None:
            raise ValueError(f"{self.kind} is an attack of Sybil identities (simulator only): "
                             "give phi PHI (and optionally sybils S)")
        if self.slices is not None and self.kind != "sybil-slices":
            raise ValueError(f"slices applies to sybil-slices only, not {self.kind}")
        if self.scale is not None and self.kind == "sybil-slices":
            raise ValueError("sybil-slices has no scale (its identities differ by their data)")
        if self.adversaries > 0 and self.phi is not None:
            raise ValueError("give either adversaries K or sybils S with phi PHI, "
                             "not both")
        if self.sybils is not None and self.phi is None:
            raise ValueError("sybils needs phi, the attack edges per honest peer")
        return self

    def attack(self) -> Attack | None:
        """The behaviour (``node.learning.attacks``), or None for an honest peer."""
        return None if self.kind is None else make_attack(self.kind, scale=self.scale,
                                                          slices=self.slices)


class RunSection(Section):
    """The run as a whole."""

    seed: int = setting(0, "run seed: data split, initial model, minibatches (and an "
                        "experiment's graph); the same on every peer of a network", ge=0)
    rounds: int = setting(100, "training rounds; the final merge follows", ge=1)
    eval_every: int = setting(1, "evaluate every N rounds (and after the last)", ge=1)
    threads: int = setting(1, "torch CPU threads", ge=1)
    import_path: list[str] = setting([], "folders put first on the Python import path for "
                                     "[model] factory and [data] loader (a config file's own "
                                     "folder is added when it is read)")
    device: Annotated[str, OneOf(lambda: ("cpu", "cuda"))] = setting(
        "cpu", "where the models train: cpu or cuda (a GPU; the simulator's reference and "
        "batched engines keep data, models and mixing matrices there)", tools=("peer", "sim"))
    quiet: bool = setting(False, "no progress line and no final table", tools=EXPERIMENT)


class PeerSection(Section):
    """This peer (``python -m node``)."""

    id: int | None = setting(None, "this peer's id, unique in the network (required with "
                             "neighbours or open membership; a peer on its own is 0)", ge=0,
                             metavar="N")
    listen: str = setting("127.0.0.1:0", "address to serve on (port 0: the OS picks)",
                          metavar="HOST:PORT")
    state_dir: str = setting("state", "folder of checkpoint.pt (every round, atomic) and "
                             "final.json; one per peer", metavar="DIR", path=True)
    log_file: str = setting("", "JSON-lines log file (python -m node: default STATE_DIR/"
                            "log.jsonl, the terminal shows readable progress; the Python API: "
                            "standard output)",
                            metavar="FILE", path=True)
    max_connections: int = setting(256, "open connections served at once (more are closed "
                                   "at once; capped below the file-descriptor limit)", ge=1)
    header_timeout_s: float = setting(10.0, "a connection must send a request head within "
                                      "this time (slow ones are closed)", gt=0)
    idle_timeout_s: float = setting(30.0, "idle keep-alive connections are closed after this",
                                    gt=0)
    min_body_rate: int = setting(65536, "bytes/s a request body must arrive at, at least "
                                 "(slower bodies are cut off: 408)", ge=1)
    max_concurrent_bodies: int = setting(8, "request bodies read at once (more: 503), which "
                                         "bounds memory to about this x max_message_bytes",
                                         ge=1)
    status_access: Annotated[str, OneOf(lambda: ("loopback", "token", "open"))] = setting(
        "loopback", "who may read /status and /metrics: loopback clients (or the token), only "
        "holders of the token, or anyone (/healthz is public)")
    status_token_file: str | None = setting(None, "file holding the bearer token for /status "
                                            "and /metrics (Authorization: Bearer TOKEN)",
                                            metavar="FILE", path=True)

    @field_validator("listen")
    @classmethod
    def _host_port(cls, value: str) -> str:
        host, _, port = value.rpartition(":")
        if not host or not port.isdigit() or not 0 <= int(port) < 65536:
            raise ValueError(f"must be HOST:PORT, got {value!r}")
        return value

    @property
    def host_port(self) -> tuple[str, int]:
        host, _, port = self.listen.rpartition(":")
        return host, int(port)


class TrustSection(Section):
    """Who this peer accepts messages from (gossip.auth; docs/design.md, "Trust")."""

    mode: Annotated[str, OneOf(lambda: ("signed", "open"))] = setting(
        "signed", "signed: only senders whose key is in the store, or certified by an "
                  "authority in it; open: anyone, each id pinned to its first key (for studies "
                  "of open networks; never the default)", flag="--trust-mode")
    key_file: str | None = setting(None, "this peer's Ed25519 key (PEM, 0600; created on first "
                                   "start; default: STATE_DIR/identity.key)", metavar="FILE",
                                   path=True, flag="--key-file")
    certificate: str | None = setting(None, "this peer's certificate from the network "
                                      "authority (python -m node keys issue)", metavar="FILE",
                                      path=True)
    store: str | None = setting(None, "the trust store: TOML with authorities = [KEY, ...] and "
                                "[peers] ID = KEY (python -m node keys store)", metavar="FILE",
                                path=True, flag="--trust-store")


class TlsSection(Section):
    """Optional TLS for the server and the client; fails closed (a file that cannot be read is
    an error at start, never a fall back to plaintext)."""

    cert_file: str | None = setting(None, "this peer's TLS certificate chain (PEM)",
                                    metavar="FILE", path=True, flag="--tls-cert")
    key_file: str | None = setting(None, "the private key of cert_file (PEM)", metavar="FILE",
                                   path=True, flag="--tls-key")
    ca_file: str | None = setting(None, "CA certificates that neighbours' TLS certificates "
                                  "must chain to (needed for https:// neighbours)",
                                  metavar="FILE", path=True, flag="--tls-ca")

    @model_validator(mode="after")
    def _all_three(self) -> TlsSection:
        given = [f for f in ("cert_file", "key_file", "ca_file") if getattr(self, f)]
        if given and len(given) < 3:
            raise ValueError("set cert_file, key_file and ca_file together (peers verify each "
                             f"other both ways); only {', '.join(given)} given")
        return self

    @property
    def enabled(self) -> bool:
        return self.cert_file is not None or self.ca_file is not None


class MembershipSection(Section):
    """Open membership (docs/algorithms.md §9.2): peers join through bootstrap peers, keep a
    Cyclon view, pick their neighbours from it, and leave and come back while the network runs.
    Off by default: the neighbours are then the fixed [neighbours] table."""

    dynamic: bool = setting(False, "open membership: accept joiners, keep a view, replace "
                            "neighbours that leave (on when bootstrap is set)",
                            flag="--dynamic-membership")
    bootstrap: list[str] = setting([], "URLs of peers to join through (python -m node --join "
                                   "URL,URL)", tools=("peer",))
    advertise_url: str | None = setting(None, "the URL other peers reach this one at "
                                        "(default: http(s)://[peer] listen)", metavar="URL",
                                        tools=("peer",))
    links: int = setting(3, "edges a peer asks for itself, to peers of its view (others ask "
                         "it too: its degree is about twice this)", ge=1)
    max_links: int = setting(10, "most neighbours a peer accepts; more link requests are "
                              "refused (the asker picks another)", ge=1)
    view_size: int = setting(16, "entries of the partial view (Cyclon's c)", ge=2, le=64)
    shuffle_length: int = setting(6, "entries exchanged per shuffle (Cyclon's l)", ge=1, le=64)
    shuffle_every_s: float = setting(1.0, "seconds between shuffles (and between attempts to "
                                     "link up to degree)", gt=0)
    forget_after_s: float = setting(30.0, "a view entry its peer has not re-signed for this "
                                    "long is forgotten (a crashed peer leaves the views)", gt=0)
    drop_suspect_rounds: int = setting(3, "a neighbour suspect for this many rounds is "
                                       "dropped and replaced from the view", ge=1)
    max_joiners: int = setting(2, "joiners this peer sends its model to at once; more are "
                               "answered 429 and ask another neighbour", ge=1)
    join_timeout_s: float = setting(30.0, "how long a joiner retries its bootstrap peers "
                                    "(with backoff) before it gives up with an error", gt=0)

    @model_validator(mode="after")
    def _degrees(self) -> MembershipSection:
        if self.links > self.max_links:
            raise ValueError(f"links ({self.links}) must be <= max_links "
                             f"({self.max_links})")
        if self.shuffle_length > self.view_size:
            raise ValueError(f"shuffle_length ({self.shuffle_length}) must be <= view_size "
                             f"({self.view_size})")
        for url in self.bootstrap:  # mem://ID: a peer of the simulator's in-memory network
            if not isinstance(url, str) or not url.startswith(("http://", "https://", "mem://")):
                raise ValueError("bootstrap: each entry must be an http:// or https:// URL")
        return self

    @property
    def enabled(self) -> bool:
        return self.dynamic or bool(self.bootstrap)


class GraphSection(Section):
    """Who talks to whom in an experiment (the topology package)."""

    nodes: int = setting(16, "number of peers", ge=2)
    topology: Annotated[str, OneOf(lambda: TOPOLOGY_NAMES)] = setting(
        "ring", "graph builder (ignored with --graph)")
    file: str | None = setting(None, "load the graph from an edge list or .json file instead",
                               flag="--graph", path=True, metavar="FILE")
    degree: int | None = setting(None, "degree of random-regular, neighbours of "
                                 "watts-strogatz (default: 4)", ge=1)
    probability: float | None = setting(None, "edge probability of erdos-renyi, rewiring "
                                        "probability of watts-strogatz (default: 0.3 and 0.1)",
                                        ge=0, le=1)
    attach: int | None = setting(None, "edges per new node m of barabasi-albert (default: 2)",
                                 ge=1)
    radius: float | None = setting(None, "radius of random-geometric (default: 0.3)", gt=0)
    max_degree: int | None = setting(None, "remove random edges (never a bridge) until no "
                                     "peer has more neighbours", ge=1)
    data_fraction: float = setting(1.0, "fraction of peers holding data (drawn with the "
                                   "seed); the others only relay", gt=0, le=1,
                                   tools=("sim",))

    @field_validator("file")
    @classmethod
    def _exists(cls, value: str | None) -> str | None:
        if value is not None and not Path(value).exists():
            raise ValueError(f"file {value} does not exist")
        return value

    def build(self, seed: int) -> Topology:
        """The experiment's graph for run seed ``seed`` (its own streams for the graph and the
        degree cap); a graph that cannot be built is an error naming [graph]."""
        try:
            return self._build(seed)
        except TopologyError as exc:
            raise ConfigError(f"[graph] nodes = {self.nodes}, topology = {self.topology}: "
                              f"{exc}") from None

    def _build(self, seed: int) -> Topology:
        return build_topology(name=self.topology, nodes=self.nodes, file=self.file,
                              seed=derive_seed(seed, "topology"), degree=self.degree,
                              probability=self.probability, attach=self.attach,
                              radius=self.radius, max_degree=self.max_degree,
                              cap_seed=derive_seed(seed, "max-degree"))


class SimSection(Section):
    """The simulator (``python -m sim``)."""

    engine: Annotated[str, OneOf(lambda: ENGINES)] = setting(
        "reference", "reference: synchronous rounds, every rule, attack and event; batched: "
        "all peers in one tensor (average mixing only); peers: the real peer protocol on a "
        "simulated clock", tools=("sim",))
    out: str | None = setting(None, "output folder (default: runs/ALGORITHM-TOPOLOGY-sSEED)",
                              tools=("sim",), metavar="DIR", path=True)


class LaunchSection(Section):
    """Real peer processes on this machine (``scripts/launch.py``)."""

    out: str = setting("runs/launch", "run folder: peer configs, states, logs, summary.json, "
                       "accuracy.png", tools=("launch",), metavar="DIR", path=True)
    kill_fraction: float = setting(0.0, "fraction of peers to SIGKILL (churn)", ge=0, le=1,
                                   tools=("launch",))
    kill_at_round: int = setting(0, "kill once every peer completed this round", ge=0,
                                 tools=("launch",))
    restart_after: float | None = setting(None, "restart killed peers after this many seconds "
                                          "(they resume from their checkpoints)", ge=0,
                                          tools=("launch",))
    timeout: float = setting(1800.0, "stop every peer and give up after this many seconds",
                             gt=0, tools=("launch",))
    join: bool = setting(False, "join mode (open membership): start the first --bootstrap "
                         "peers, linked to each other, then every other peer with python -m "
                         "node --join BOOTSTRAP_URLS, --join-spacing-s apart; the joiners pick "
                         "their neighbours from the view, so [graph] topology does not apply",
                         tools=("launch",))
    bootstrap: int = setting(2, "join mode: peers started first, that the others join through "
                             "(must be < nodes)", ge=1, tools=("launch",))
    join_spacing_s: float = setting(1.0, "join mode: seconds between two joiners' starts (the "
                                    "first starts once every bootstrap peer serves)", ge=0,
                                    tools=("launch",))
    start_method: Annotated[str, OneOf(lambda: ("auto", "fork", "exec"))] = setting(
        "auto", "how peers start: fork (from the launcher, which imports torch and loads the "
        "data once: pages shared copy-on-write, no per-peer interpreter start), exec (a new "
        "python -m node interpreter each), auto (fork on Linux with --threads 1, else exec)",
        tools=("launch",))
    kill_bootstrap_at_round: int | None = setting(
        None, "join mode: SIGKILL the bootstrap peers once they all completed this round; the "
        "joiners go on without them", ge=1, tools=("launch",), metavar="R")


def _section(cls: type[Section]) -> Any:
    return Field(default_factory=cls)


class _Shared(Config):
    """The sections every tool reads, with the same meaning everywhere."""

    run: RunSection = _section(RunSection)
    data: DataSection = _section(DataSection)
    model: ModelSection = _section(ModelSection)
    algorithm: AlgorithmSection = _section(AlgorithmSection)
    gossip: GossipSection = _section(GossipSection)
    mixing: MixingSection = _section(MixingSection)
    attack: AttackSection = _section(AttackSection)
    membership: MembershipSection = _section(MembershipSection)


class PeerConfig(_Shared):
    """One peer (``python -m node --config peer.toml``)."""

    TOOL: ClassVar[str] = "peer"
    peer: PeerSection = _section(PeerSection)
    trust: TrustSection = _section(TrustSection)
    tls: TlsSection = _section(TlsSection)
    neighbours: dict[int, str] = Field(default_factory=dict)

    @property
    def id(self) -> int:
        """This peer's id ([peer] id; a checked config always has one)."""
        if self.peer.id is None:
            raise ValueError("[peer] id is not set")
        return self.peer.id

    @field_validator("neighbours", mode="before")
    @classmethod
    def _neighbour_table(cls, raw: Any) -> dict[int, str]:
        if not isinstance(raw, dict):
            raise ValueError('must be a table of id = "http://host:port"')
        out = {}
        for key, url in raw.items():
            try:
                peer = int(key)
            except (TypeError, ValueError):
                raise ValueError(f"key {str(key)[:20]!r} must be a peer id (integer)") from None
            if not isinstance(url, str) or not url.startswith(("http://", "https://")):
                raise ValueError(f"{peer} must be an http:// or https:// URL")
            out[peer] = url
        return out

    @model_validator(mode="after")
    def _whole(self) -> PeerConfig:
        if self.peer.id is None:
            if self.neighbours or self.membership.enabled:
                raise ValueError("[peer] id must be set to this peer's id (>= 0): it has "
                                 "neighbours or joins a network")
            self.peer.id = 0  # a peer on its own data, alone: nobody needs to tell it apart
        if self.peer.id in self.neighbours:
            raise ValueError(f"[neighbours] lists the peer itself ({self.peer.id})")
        for peer, url in sorted(self.neighbours.items()):
            if url.startswith("https://") and self.tls.ca_file is None:
                raise ValueError(f"[neighbours] {peer} is https:// but [tls] ca_file is not set "
                                 "(it is what verifies the neighbour's certificate)")
            if url.startswith("http://") and self.tls.enabled:
                raise ValueError(f"[neighbours] {peer} is plain http:// while [tls] is "
                                 "configured: use https:// for every neighbour (no plaintext "
                                 "fall back)")
        if self.peer.status_access == "token" and self.peer.status_token_file is None:
            raise ValueError("[peer] status_access = 'token' needs status_token_file")
        return self


class _Experiment(_Shared):
    """Many peers: the shared sections plus the graph."""

    graph: GraphSection = _section(GraphSection)

    @model_validator(mode="after")
    def _whole(self) -> _Experiment:
        if self.attack.kind is not None and self.attack.adversaries == 0 and \
                self.attack.phi is None:
            raise ValueError("[attack] say where the adversaries are: adversaries K "
                             "(--adversaries), or phi PHI with optionally sybils S (--phi)")
        if self.attack.adversaries >= self.graph.nodes:
            raise ValueError(f"[attack] adversaries must be < [graph] nodes "
                             f"({self.graph.nodes}), got {self.attack.adversaries}")
        if self.graph.data_fraction < 1.0 and self.attack.kind is not None:
            raise ValueError("[graph] data_fraction: relays and attacks do not combine; use 1")
        return self

    def adversaries(self) -> list[int]:
        """The peers that ``[attack] adversaries`` makes adversarial (sorted; drawn with the
        run seed, so the simulator, the launcher and its summary agree)."""
        if self.attack.kind is None or self.attack.phi is not None:
            return []
        return choose_adversaries(self.graph.nodes, self.attack.adversaries,
                                  derive_seed(self.run.seed, "adversaries"))

    def peer_configs(self, addresses: list[tuple[str, int]], run_dir: Path,
                     listen: list[str] | None = None) -> list[PeerConfig]:
        """One PeerConfig per peer of this experiment: its address (``listen[i]``, default
        ``addresses[i]``), neighbours from the topology, shard i of n, the shared sections as
        they are, and the attack only on the peers chosen as adversaries (the simulator's
        choice, same seed stream)."""
        seed, nodes = self.run.seed, self.graph.nodes
        topology = self.graph.build(seed)
        if topology.time_varying:
            raise ValueError(f"[graph] topology {self.graph.topology} changes every round; "
                             "real peers need a static graph")
        graph = topology.graph_at(0)
        adversaries = self.adversaries()
        shared = {name: getattr(self, name).model_dump()
                  for name in ("model", "algorithm", "gossip", "mixing", "membership")}
        data = self.data.model_dump(exclude={"shard", "num_shards"})
        run = self.run.model_dump(include={"seed", "rounds", "eval_every", "threads",
                                           "import_path"})
        attack = {"kind": self.attack.kind, "scale": self.attack.scale}
        configs = []
        for i in range(nodes):
            folder = run_dir / f"peer{i}"
            host, port = addresses[i]
            configs.append(PeerConfig.from_table({
                "peer": {"id": i, "listen": listen[i] if listen else f"{host}:{port}",
                         "state_dir": str(folder), "log_file": str(folder / PEER_LOG)},
                "run": run, **shared,
                "neighbours": {j: f"http://{addresses[j][0]}:{addresses[j][1]}"
                               for j in sorted(graph.neighbors(i))},
                "data": {**data, "shard": i, "num_shards": nodes},
                "attack": attack if i in adversaries else {}}))
        return configs


class SimConfig(_Experiment):
    """A simulation (``python -m sim``)."""

    TOOL: ClassVar[str] = "sim"
    sim: SimSection = _section(SimSection)

    @property
    def out(self) -> str:
        """The output folder: [sim] out, or runs/ALGORITHM-TOPOLOGY-sSEED."""
        return self.sim.out or \
            f"runs/{self.algorithm.name}-{self.graph.topology}-s{self.run.seed}"


class LaunchConfig(_Experiment):
    """Real peer processes (``scripts/launch.py``)."""

    TOOL: ClassVar[str] = "launch"
    launch: LaunchSection = _section(LaunchSection)

    @property
    def out(self) -> str:
        return self.launch.out


for _cls in (PeerConfig, SimConfig, LaunchConfig):
    ALL_SECTIONS.update({name: f.annotation for name, f in _cls.model_fields.items()})
    CONFIGS[_cls.TOOL] = _cls

__all__ = [
    "AlgorithmSection", "AttackSection", "Config", "ConfigError", "DataSection", "ENGINES",
    "GossipSection", "GraphSection", "LaunchConfig", "LaunchSection", "MembershipSection",
    "MixingSection",
    "ModelSection", "PeerConfig", "PeerSection", "RunSection", "SimConfig", "SimSection",
    "TlsSection", "TrustSection", "learner_for",
]


def learner_for(config: PeerConfig | SimConfig | LaunchConfig, node_id: int, *, data: Dataset,
                shard: Any, attack: Attack | None = None, device: str = "cpu",
                factory: Any = None) -> Learner:
    """Peer ``node_id``'s Learner from the [model], [algorithm], [mixing] and [run] sections:
    the one place where the simulator and the real peer turn settings into a learner, which is
    what keeps their runs equal number for number."""
    return make_learner(
        node_id, data=data, shard=shard, model=config.model.name, hidden=config.model.hidden,
        train=config.algorithm.train_config(), algorithm=config.algorithm.resolve(),
        seed=config.run.seed, mixing=config.mixing.name, mixing_options=config.mixing.options(),
        init=config.mixing.init, attack=attack, device=device, buffers=config.model.buffers,
        factory=factory or config.model.factory_function(config.run.import_path),
        model_options=config.model.options)
