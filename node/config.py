"""The peer's configuration: one TOML file (documented key by key in docs/peer-config.md).

Every key has a default except ``id``; unknown keys, wrong types and out-of-range values get one
error that names the key (and its section).
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gossip import CODECS
from mixing import MIXING_NAMES, SybilWall, VarianceCorrected
from node.learning.algorithms import ALGORITHM_NAMES
from node.learning.attacks import ATTACKS
from node.learning.data import DATASETS, PARTITIONS
from node.learning.learner import INITS
from node.learning.model import MODELS

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib


class ConfigError(ValueError):
    """A bad setting in a config file or a flag; the message names the key."""


class PeerConfigError(ConfigError):
    """A bad peer setting; the message names the key."""


@dataclass
class DataSection:
    dataset: str = "digits"
    partition: str = "iid"
    alpha: float = 0.5
    classes_per_node: int = 2
    shard: int = 0
    num_shards: int = 1
    synthetic_alpha: float = 1.0
    synthetic_beta: float = 1.0
    test_fraction: float = 0.25


@dataclass
class ModelSection:
    name: str = "mlp"
    hidden: int = 64


@dataclass
class AlgorithmSection:
    name: str = "dsgd"
    local_steps: int | None = None
    gossip_steps: int | None = None
    rho: float | None = None
    lr: float = 0.05
    lr_decay: float = 0.998
    momentum: float = 0.9
    dampening: float = 0.0
    weight_decay: float = 5e-4
    batch_size: int = 16
    final_merge: bool = True


@dataclass
class MixingSection:
    """The mixing rule (``mixing.make_rule``) and the initial model."""

    name: str = "average"
    byzantine_f: int = 1
    clip_radius: float | None = None
    vc_own_weight: float | None = None
    vc_target: str = "others"
    history_mode: str = "latest"
    history_decay: float = 0.8
    init: str = "shared"

    def options(self) -> dict[str, Any]:
        return {"f": self.byzantine_f, "radius": self.clip_radius,
                "own_weight": self.vc_own_weight, "target": self.vc_target,
                "history_mode": self.history_mode, "decay": self.history_decay}


@dataclass
class AttackSection:
    """Makes this peer an adversary (``node.learning.attacks``); ``kind = "none"``: honest."""

    kind: str = "none"
    scale: float | None = None


@dataclass
class GossipSection:
    codec: str = "f32"
    max_message_bytes: int = 64 * 2**20
    deadline_floor_s: float = 1.0
    deadline_ceiling_s: float = 10.0
    deadline_factor: float = 3.0
    startup_timeout_s: float = 60.0


@dataclass
class PeerConfig:
    id: int = -1
    listen: str = "127.0.0.1:0"
    seed: int = 0
    rounds: int = 10
    eval_every: int = 1
    state_dir: str = "state"
    log_file: str = ""
    device: str = "cpu"
    threads: int = 1
    neighbours: dict[int, str] = field(default_factory=dict)
    data: DataSection = field(default_factory=DataSection)
    model: ModelSection = field(default_factory=ModelSection)
    algorithm: AlgorithmSection = field(default_factory=AlgorithmSection)
    gossip: GossipSection = field(default_factory=GossipSection)
    mixing: MixingSection = field(default_factory=MixingSection)
    attack: AttackSection = field(default_factory=AttackSection)

    @property
    def host_port(self) -> tuple[str, int]:
        host, _, port = self.listen.rpartition(":")
        return host, int(port)

    def to_dict(self) -> dict[str, Any]:
        raw = dataclasses.asdict(self)
        raw["neighbours"] = {str(k): v for k, v in self.neighbours.items()}
        return raw


_SECTIONS = {"data": DataSection, "model": ModelSection, "algorithm": AlgorithmSection,
             "gossip": GossipSection, "mixing": MixingSection, "attack": AttackSection}
_CHOICES = {("data", "dataset"): DATASETS, ("data", "partition"): PARTITIONS,
            ("model", "name"): tuple(MODELS), ("algorithm", "name"): ALGORITHM_NAMES,
            ("gossip", "codec"): CODECS, ("", "device"): ("cpu", "cuda"),
            ("mixing", "name"): MIXING_NAMES, ("mixing", "vc_target"): VarianceCorrected.TARGETS,
            ("mixing", "history_mode"): SybilWall.HISTORY_MODES, ("mixing", "init"): INITS,
            ("attack", "kind"): ("none",) + ATTACKS}


def _where(section: str, key: str) -> str:
    return f"[{section}] {key}" if section else key


def typed_value(where: str, value: Any, kind: str) -> Any:
    """``value`` checked against a dataclass field's type text (``int``, ``float | None``...);
    ints are accepted for floats. Raises ConfigError naming ``where``."""
    if value is None and "None" in kind:
        return None
    if kind.startswith("bool"):
        ok = isinstance(value, bool)
    elif kind.startswith("int"):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind.startswith("float"):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    else:
        ok = isinstance(value, str)
    if not ok:
        raise ConfigError(f"{where} must be {kind.split(' ')[0]}, got {value!r}")
    return value


def _fill(target: Any, section: str, raw: dict[str, Any]) -> None:
    fields = {f.name: f for f in dataclasses.fields(target)}
    for key, value in raw.items():
        name = key.replace("-", "_")
        if name not in fields or name in _SECTIONS or name == "neighbours":
            valid = ", ".join(k for k in fields if k not in _SECTIONS and k != "neighbours")
            raise PeerConfigError(f"unknown key {_where(section, key)!r}; valid: {valid}")
        try:
            value = typed_value(_where(section, name), value, str(fields[name].type))
        except ConfigError as exc:
            raise PeerConfigError(str(exc)) from exc
        setattr(target, name, value)


def _neighbours(raw: Any) -> dict[int, str]:
    if not isinstance(raw, dict):
        raise PeerConfigError("[neighbours] must be a table of id = \"http://host:port\"")
    out = {}
    for key, url in raw.items():
        try:
            peer = int(key)
        except ValueError as exc:
            raise PeerConfigError(f"[neighbours] key {key!r} must be a peer id (integer)") from exc
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise PeerConfigError(f"[neighbours] {key} must be an http:// URL, got {url!r}")
        out[peer] = url
    return out


def parse_peer_config(raw: dict[str, Any]) -> PeerConfig:
    """Build a PeerConfig from a TOML-shaped dict (sections as nested tables)."""
    config = PeerConfig()
    top = {k: v for k, v in raw.items() if k not in _SECTIONS and k != "neighbours"}
    _fill(config, "", top)
    if "neighbours" in raw:
        config.neighbours = _neighbours(raw["neighbours"])
    for name in _SECTIONS:
        if name in raw:
            if not isinstance(raw[name], dict):
                raise PeerConfigError(f"[{name}] must be a table")
            _fill(getattr(config, name), name, raw[name])
    validate_peer_config(config)
    return config


def validate_peer_config(config: PeerConfig) -> None:
    """Range and choice checks; the first problem raises PeerConfigError naming its key."""
    for (section, key), valid in _CHOICES.items():
        value = getattr(getattr(config, section) if section else config, key)
        if value not in valid:
            raise PeerConfigError(f"{_where(section, key)}: unknown {value!r}; valid: "
                                  f"{', '.join(valid)}")
    checks = [
        ("", "id", config.id >= 0, "must be set to a peer id >= 0"),
        ("", "rounds", config.rounds >= 0, "must be >= 0"),
        ("", "eval_every", config.eval_every >= 1, "must be >= 1"),
        ("", "threads", config.threads >= 1, "must be >= 1"),
        ("data", "num_shards", config.data.num_shards >= 1, "must be >= 1"),
        ("data", "shard", 0 <= config.data.shard < config.data.num_shards,
         f"must be in 0..num_shards-1 ({config.data.num_shards - 1})"),
        ("algorithm", "lr", config.algorithm.lr > 0, "must be > 0"),
        ("algorithm", "batch_size", config.algorithm.batch_size >= 1, "must be >= 1"),
        ("algorithm", "dampening", 0 <= config.algorithm.dampening < 1, "must be in [0, 1)"),
        ("mixing", "byzantine_f", config.mixing.byzantine_f >= 0, "must be >= 0"),
        ("mixing", "clip_radius", config.mixing.clip_radius is None
         or config.mixing.clip_radius > 0, "must be > 0"),
        ("mixing", "vc_own_weight", config.mixing.vc_own_weight is None
         or 0 <= config.mixing.vc_own_weight <= 1, "must be in [0, 1]"),
        ("mixing", "history_decay", config.mixing.history_decay > 0, "must be > 0"),
        ("attack", "scale", config.attack.scale is None or config.attack.scale > 0,
         "must be > 0"),
        ("gossip", "max_message_bytes", config.gossip.max_message_bytes >= 1024,
         "must be >= 1024"),
        ("gossip", "deadline_floor_s", 0 < config.gossip.deadline_floor_s
         <= config.gossip.deadline_ceiling_s, "must be > 0 and <= deadline_ceiling_s"),
        ("gossip", "deadline_factor", config.gossip.deadline_factor >= 1, "must be >= 1"),
        ("gossip", "startup_timeout_s", config.gossip.startup_timeout_s > 0, "must be > 0"),
    ]
    for section, key, ok, message in checks:
        if not ok:
            raise PeerConfigError(f"{_where(section, key)} {message}")
    host, _, port = config.listen.rpartition(":")
    if not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise PeerConfigError(f"listen must be HOST:PORT, got {config.listen!r}")
    if config.id in config.neighbours:
        raise PeerConfigError(f"[neighbours] lists the peer itself ({config.id})")


def read_toml(path: str | Path) -> dict[str, Any]:
    """The table of a TOML file; a missing or malformed file is a ConfigError."""
    path = Path(path)
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ConfigError(f"--config: file {path} does not exist") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"--config: {path} is not valid TOML: {exc}") from exc


def load_peer_config(path: str | Path) -> dict[str, Any]:
    """The raw TOML table of ``path`` (parse with :func:`parse_peer_config`)."""
    try:
        return read_toml(path)
    except ConfigError as exc:
        raise PeerConfigError(str(exc)) from exc


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(value)


def dump_peer_config(config: PeerConfig) -> str:
    """TOML text that :func:`load_peer_config` reads back into an equal config."""
    raw = config.to_dict()
    lines = [f"{k} = {_toml_value(v)}" for k, v in raw.items()
             if k not in _SECTIONS and k != "neighbours"]
    lines.append("\n[neighbours]")
    lines += [f'"{k}" = {_toml_value(v)}' for k, v in raw["neighbours"].items()]
    for name in _SECTIONS:
        lines.append(f"\n[{name}]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in raw[name].items() if v is not None]
    return "\n".join(lines) + "\n"
