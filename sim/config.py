"""Every setting of a simulation run, with its default; TOML files and flags fill the same
fields."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from node.config import ConfigError, MixingSection, read_toml, typed_value


@dataclass
class SimConfig:
    # data
    dataset: str = "digits"
    synthetic_alpha: float = 1.0
    synthetic_beta: float = 1.0
    partition: str = "iid"
    alpha: float = 0.5
    classes_per_node: int = 2
    test_fraction: float = 0.25
    # graph
    nodes: int = 16
    topology: str = "ring"
    graph: str | None = None
    degree: int | None = None
    probability: float | None = None
    attach: int | None = None
    radius: float | None = None
    max_degree: int | None = None
    data_fraction: float = 1.0
    # algorithm
    algorithm: str = "dsgd"
    rounds: int = 100
    local_steps: int | None = None
    gossip_steps: int | None = None
    rho: float | None = None
    final_merge: bool = True
    # mixing rule (mixing.make_rule)
    mixing: str = "average"
    byzantine_f: int = 1
    clip_radius: float | None = None
    vc_own_weight: float | None = None
    vc_target: str = "others"
    history_mode: str = "latest"
    history_decay: float = 0.8
    init: str = "shared"
    # attack (node.learning.attacks)
    attack: str | None = None
    adversaries: int = 0
    sybils: int | None = None
    phi: float | None = None
    attack_scale: float | None = None
    # local optimizer and model
    model: str = "mlp"
    hidden: int = 64
    lr: float = 0.05
    lr_decay: float = 0.998
    momentum: float = 0.9
    dampening: float = 0.0
    weight_decay: float = 5e-4
    batch_size: int = 16
    # run
    seed: int = 0
    engine: str = "reference"
    eval_every: int = 1
    threads: int = 1
    out: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def mixing_section(self) -> MixingSection:
        """The peer config's [mixing] table for these settings (the launcher writes it; the
        engine takes its ``options()`` for ``mixing.make_rule``)."""
        return MixingSection(name=self.mixing, byzantine_f=self.byzantine_f,
                             clip_radius=self.clip_radius, vc_own_weight=self.vc_own_weight,
                             vc_target=self.vc_target, history_mode=self.history_mode,
                             history_decay=self.history_decay, init=self.init)


FIELDS = {f.name: f for f in dataclasses.fields(SimConfig)}


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML config; keys are the flag names with '-' or '_'. Unknown keys are errors."""
    return settings_from_table(str(path), read_toml(path))


def settings_from_table(where: str, table: dict[str, Any]) -> dict[str, Any]:
    """SimConfig settings from a TOML table, each key checked against its field's type."""
    settings = {}
    for key, value in table.items():
        name = key.replace("-", "_")
        if name not in FIELDS:
            valid = ", ".join(k.replace("_", "-") for k in FIELDS)
            raise ConfigError(f"{where}: unknown key '{key}'; valid: {valid}")
        settings[name] = typed_value(f"{where}: key '{key}'", value, str(FIELDS[name].type))
    return settings


def build_config(file_settings: dict[str, Any], flag_settings: dict[str, Any]) -> SimConfig:
    """Defaults, overridden by the config file, overridden by flags."""
    merged = {**file_settings, **{k: v for k, v in flag_settings.items() if v is not None}}
    return SimConfig(**merged)
