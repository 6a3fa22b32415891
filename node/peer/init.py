"""``python -m node init DIR``: write a starter project for bringing your own model and data.

DIR gets four files that work together as they are:

* ``peer.toml``: one peer (``python -m node --config peer.toml``) with ``[model] factory`` and
  ``[data] loader`` pointing at the two files below; its ``[graph]`` and ``[launch]`` sections
  make the same file an experiment for ``python -m sim`` and ``scripts/launch.py`` (each tool
  ignores the sections that are not its own);
* ``model.py``: ``build(in_features=8, num_classes=2, hidden=32)``, a small MLP;
* ``data.py``: ``load(rows=2000, features=8, seed=0)``, a tabular data set generated with numpy
  from a rule a model can learn (replace it with your own data);
* ``README.md``: the commands, and where the results end up.

DIR is created if it does not exist; an existing DIR must be empty (nothing is overwritten).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

PEER_TOML = '''\
# A starter project: one peer, your model (model.py) and your data (data.py).
# Every key is documented in docs/peer-config.md and by `python -m node --help`.
# The same file drives all three tools; each ignores the sections that are not its own:
#   python -m node --config peer.toml                       one peer ([peer], [neighbours])
#   python -m sim --config peer.toml                        a simulation ([graph], [sim])
#   python scripts/launch.py --config peer.toml --nodes 4   real peer processes ([launch])
# Relative paths are relative to this file, and this file's folder is importable, so
# "model:build" is the function build in model.py next to it.

[peer]
id = 0                          # this peer's id, unique in its network
listen = "127.0.0.1:0"          # HOST:PORT to serve on (port 0: the OS picks one)
state_dir = "state"             # checkpoint.pt (every round) and final.json
log_file = "state/log.jsonl"    # JSON-lines log of the run

# [neighbours]                  # peer id = URL of a neighbour; none: this peer trains alone
# "1" = "http://127.0.0.1:8001"

[run]
seed = 0
rounds = 20

[model]
factory = "model:build"         # model.py, function build: returns a torch.nn.Module

[model.options]                 # keyword arguments of build()
in_features = 8
num_classes = 2
hidden = 32

[data]
loader = "data:load"            # data.py, function load: returns the data
validation_fraction = 0.2       # this share of the peer's training data scores val_accuracy

[data.options]                  # keyword arguments of load()
rows = 2000
features = 8
seed = 0

[algorithm]
name = "dfedavg"                # K local SGD steps per round, then gossip averaging
local_steps = 10
lr = 0.05

# --- experiments: ignored by `python -m node` ---
[graph]                         # python -m sim and scripts/launch.py: how many peers, who talks
nodes = 4
topology = "ring"

[sim]
out = "runs/sim"                # the simulator's results (relative to this file's folder)

[launch]
out = "runs/launch"             # the launcher's results (relative to this file's folder)
'''

MODEL_PY = '''\
"""The model every peer trains: named in peer.toml as [model] factory = "model:build", with
[model.options] as the keyword arguments. Any function returning a torch.nn.Module works; all
peers build the same architecture, and the peers share its initial weights."""

from torch import nn


def build(in_features: int = 8, num_classes: int = 2, hidden: int = 32) -> nn.Module:
    """A small multilayer perceptron: in_features -> hidden -> hidden -> num_classes logits."""
    return nn.Sequential(
        nn.Linear(in_features, hidden),
        nn.ReLU(),
        nn.Linear(hidden, hidden),
        nn.ReLU(),
        nn.Linear(hidden, num_classes),
    )
'''

DATA_PY = '''\
"""The data: named in peer.toml as [data] loader = "data:load", with [data.options] as the
keyword arguments. Replace it with a function that reads your own data.

What a loader may return (each part as (x, y) numpy arrays or tensors, or a torch Dataset of
(x, y) items; x: one row of float features per sample, y: integer class labels 0..C-1):

* the training set alone;
* (train, validation, test), where validation or test may be None;
* a dict {"train": ..., "validation": ..., "test": ...} (validation and test optional).

A test set is what every peer's `accuracy` is scored on. A peer without one reports only
`val_accuracy` (on the validation_fraction of its own data it holds out); the simulator and the
launcher hold out [data] test_fraction of the training set as the shared test set when the
loader gives none.
"""

import numpy as np


def load(rows: int = 2000, features: int = 8, seed: int = 0):
    """A learnable tabular example: x ~ N(0, I) with `features` columns, and the label
    y = 1 if w . x > 0 else 0 for a fixed random direction w (so about half of each class, and
    a linear model can reach 100%). `rows` samples for training plus a quarter as many for the
    test set, all drawn from one seeded generator (the same on every peer)."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=features)
    x = rng.normal(size=(rows + rows // 4, features)).astype(np.float32)
    y = (x @ w > 0).astype(np.int64)
    return {"train": (x[:rows], y[:rows]), "test": (x[rows:], y[rows:])}
'''

README_MD = '''\
# A starter decentralized-learning project

Written by `python -m node init`. Four files:

- `peer.toml`: the settings (every key: docs/peer-config.md of the project, or
  `python -m node --help`);
- `model.py`: `build(in_features, num_classes, hidden)` returns the model (a small MLP);
- `data.py`: `load(rows, features, seed)` returns the data: a tabular example made up with numpy,
  label = 1 if w . x > 0 for a fixed random w. Replace it with your own loader (its docstring says
  what it may return), or read a file instead: `[data] format = "csv"`, `path = "my.csv"`,
  `label = "my_label_column"` (also npz, imagefolder, mnist, cifar10).

Run the commands from this folder (the project's virtual environment active, or the project's
`.venv/bin/python` in place of `python`).

## One peer

    python -m node --config peer.toml

It trains alone (no `[neighbours]`) for `[run] rounds` rounds. Add neighbours as
`[neighbours]` entries `"1" = "http://HOST:PORT"` (or `--peers 1=http://HOST:PORT`) and give every
peer its own `[peer] id` and `listen` address. Any key can be overridden by a flag, e.g.
`--rounds 5`. Results:

- `state/final.json`: `accuracy` (on the loader's test set), `val_accuracy` (on the 20% of its
  data the peer held out, `[data] validation_fraction`), `merged_accuracy`, `rounds_completed`,
  traffic;
- `state/log.jsonl`: one JSON line per event (a `round` line per round with loss and accuracy);
- `state/checkpoint.pt`: a restarted peer resumes from it. Start afresh by deleting `state/`
  (a finished peer started again only says that it is done).

## A simulation

    python -m sim --config peer.toml

`[graph] nodes` (4) peers on a `ring`, each with its shard of the training data, in one process.
Results in `runs/sim/` (`[sim] out`, or `--out DIR`): `summary.json` (`mean_acc`, the peers'
mean test accuracy; `merged_acc`, after the final merge), `metrics.jsonl`, `accuracy.png`.

## Several real peers on this machine

    python scripts/launch.py --config peer.toml --nodes 4

(`scripts/launch.py` is in the project's folder: give its path from here.) It writes one config
per peer (shard i of n of the data) and starts them as `python -m node` processes on 127.0.0.1.
Results in `runs/launch/` (`[launch] out`, or `--out DIR`): `summary.json` (`mean_acc`,
`merged_acc`, and per peer under `peers`), `accuracy.png`, each peer's config `peerI.toml` and
its folder `peerI/` with its log and `final.json`. The simulator scores every peer on the shared
test set only and holds out no validation data, so its figures differ a little from the launched
peers' (which keep `validation_fraction` of their shard for `val_accuracy`).
'''

FILES = {"peer.toml": PEER_TOML, "model.py": MODEL_PY, "data.py": DATA_PY,
         "README.md": README_MD}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m node init",
        description="Write a starter project into DIR: peer.toml (one peer, plus [graph] and "
        "[launch] so the same file runs the simulator and the launcher), model.py (a model "
        "factory, [model] factory = \"model:build\"), data.py (a data loader, [data] loader = "
        "\"data:load\", with a small generated tabular example) and README.md (the commands "
        "and where the results are). Then, in DIR: python -m node --config peer.toml",
        epilog="DIR is created if needed; an existing DIR must be empty.")
    p.add_argument("dir", metavar="DIR", help="folder for the new project (new or empty)")
    return p


def write_project(folder: Path) -> list[Path]:
    """Write the starter files into ``folder`` (created if needed; must be empty)."""
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{folder} exists and is not a folder")
    if folder.is_dir() and any(folder.iterdir()):
        raise ValueError(f"{folder} is not empty; give a new or empty folder")
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, text in FILES.items():
        path = folder / name
        path.write_text(text)
        paths.append(path)
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    folder = Path(args.dir)
    try:
        write_project(folder)
    except (ValueError, OSError) as exc:
        print(f"python -m node init: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {', '.join(FILES)} to {folder}; next: cd {folder} && "
          f"{sys.executable} -m node --config peer.toml (README.md has the rest)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
