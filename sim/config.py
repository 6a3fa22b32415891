"""Every setting of a simulation run, with its default; TOML files and flags fill the same
fields."""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib


class ConfigError(ValueError):
    """A bad setting; the message names the key or flag and the valid values."""


@dataclass
class SimConfig:
    # data
    dataset: str = "digits"
    synthetic_alpha: float = 1.0
    synthetic_beta: float = 1.0
    partition: str = "iid"
    alpha: float = 0.5
    classes_per_node: int = 2
    # graph
    nodes: int = 16
    topology: str = "ring"
    graph: str | None = None
    degree: int | None = None
    probability: float | None = None
    attach: int | None = None
    radius: float | None = None
    # algorithm
    algorithm: str = "dsgd"
    rounds: int = 100
    local_steps: int | None = None
    gossip_steps: int | None = None
    rho: float | None = None
    final_merge: bool = True
    # local optimizer and model
    model: str = "mlp"
    lr: float = 0.05
    lr_decay: float = 0.998
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 16
    # run
    seed: int = 0
    eval_every: int = 1
    threads: int = 1
    out: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


FIELDS = {f.name: f for f in dataclasses.fields(SimConfig)}


def _check_type(key: str, value: Any, source: str) -> Any:
    kind = FIELDS[key].type
    if value is None:
        return value
    if "bool" in kind:
        ok = isinstance(value, bool)
    elif kind.startswith("int"):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind.startswith("float"):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    else:
        ok = isinstance(value, str)
    if not ok:
        raise ConfigError(f"{source}: key '{key}' must be {kind}, got {value!r}")
    return value


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML config; keys are the flag names with '-' or '_'. Unknown keys are errors."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ConfigError(f"--config: file {path} does not exist") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"--config: {path} is not valid TOML: {exc}") from exc
    settings = {}
    for key, value in raw.items():
        name = key.replace("-", "_")
        if name not in FIELDS:
            valid = ", ".join(k.replace("_", "-") for k in FIELDS)
            raise ConfigError(f"{path}: unknown key '{key}'; valid: {valid}")
        settings[name] = _check_type(name, value, str(path))
    return settings


def build_config(file_settings: dict[str, Any], flag_settings: dict[str, Any]) -> SimConfig:
    """Defaults, overridden by the config file, overridden by flags."""
    merged = {**file_settings, **{k: v for k, v in flag_settings.items() if v is not None}}
    return SimConfig(**merged)
