"""The algorithms by name: each is a choice of local optimizer (K, rho) and gossip steps Q.

All four compose the same parts (LocalTrainer + weighted_average), none is a copy of another:

* ``dsgd``: one SGD step, then one gossip step (ATC D-SGD, Koloskova et al. 2020, docs/algorithms.md
  §1.2).
* ``dfedavg``: K SGD steps, then one gossip step (Sun et al. 2022, docs/algorithms.md §1.2).
* ``dfedsam``: K SAM steps with radius rho, then one gossip step (Shi et al. 2023,
  docs/algorithms.md §2.1).
* ``dfedsam-mgs``: K SAM steps, then Q gossip steps, X <- W^Q Z (docs/algorithms.md §2.1), each a
  real exchange.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Algorithm:
    name: str
    local_steps: int
    rho: float
    gossip_steps: int


# name -> (settings the algorithm fixes, defaults of the settings it leaves free)
_ALGORITHMS: dict[str, tuple[dict, dict]] = {
    "dsgd": ({"local_steps": 1, "rho": 0.0, "gossip_steps": 1}, {}),
    "dfedavg": ({"rho": 0.0, "gossip_steps": 1}, {"local_steps": 5}),
    "dfedsam": ({"gossip_steps": 1}, {"local_steps": 5, "rho": 0.05}),
    "dfedsam-mgs": ({}, {"local_steps": 5, "rho": 0.05, "gossip_steps": 4}),
}
ALGORITHM_NAMES = tuple(_ALGORITHMS)


def resolve_algorithm(name: str, *, local_steps: int | None = None, rho: float | None = None,
                      gossip_steps: int | None = None) -> Algorithm:
    """Fill in the algorithm's fixed settings and defaults.

    Asking for a different value of a setting the algorithm fixes (``--rho 0.1`` with ``dsgd``)
    is an error rather than a silent change of algorithm; use ``dfedsam-mgs`` to vary all three.
    """
    if name not in _ALGORITHMS:
        raise ValueError(f"unknown algorithm {name!r}; valid: {', '.join(ALGORITHM_NAMES)}")
    fixed, defaults = _ALGORITHMS[name]
    asked = {"local_steps": local_steps, "rho": rho, "gossip_steps": gossip_steps}
    settings = {}
    for key, value in asked.items():
        if key in fixed:
            if value is not None and value != fixed[key]:
                raise ValueError(
                    f"{key} = {value} does not apply to {name}, which fixes it to "
                    f"{fixed[key]}; use dfedsam-mgs to set it freely")
            settings[key] = fixed[key]
        else:
            settings[key] = defaults[key] if value is None else value
    if settings["local_steps"] < 1:
        raise ValueError(f"local_steps must be >= 1, got {settings['local_steps']}")
    if settings["gossip_steps"] < 0:
        raise ValueError(f"gossip_steps must be >= 0, got {settings['gossip_steps']}")
    if settings["rho"] < 0:
        raise ValueError(f"rho must be >= 0, got {settings['rho']}")
    return Algorithm(name, int(settings["local_steps"]), float(settings["rho"]),
                     int(settings["gossip_steps"]))
