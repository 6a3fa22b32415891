"""Write readings.csv: made-up machine sensor readings and whether the machine was at fault.

Eight numeric columns in their own units (temperature_c, humidity_pct, pressure_bar,
vibration_mm_s, current_a, voltage_v, rpm, noise_db) and the label column ``fault`` (0 or 1).
Each reading is drawn around a typical value; a machine is at fault when it runs hot, shakes and
draws current together (a weighted sum of the standardized temperature, vibration, current and
humidity, plus a temperature x vibration interaction, above a threshold), so a small MLP can learn
the rule. A share of the labels (``--noise``, default 2%) is flipped, which caps the reachable
accuracy near 98%. Seeded: the same arguments always write the same file.

    python make_data.py                       # 4000 rows into readings.csv next to this script
    python make_data.py --rows 20000 --out big.csv --seed 1
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np

# column: (typical value, spread) in the column's unit
SENSORS = {
    "temperature_c": (60.0, 8.0),
    "humidity_pct": (45.0, 12.0),
    "pressure_bar": (5.0, 0.6),
    "vibration_mm_s": (3.0, 1.0),
    "current_a": (12.0, 2.5),
    "voltage_v": (230.0, 4.0),
    "rpm": (1500.0, 120.0),
    "noise_db": (70.0, 5.0),
}


def readings(rows: int, seed: int, noise: float) -> tuple[np.ndarray, np.ndarray]:
    """(values (rows, 8) in the sensors' units, fault labels (rows,))."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(rows, len(SENSORS)))
    names = list(SENSORS)
    t, h, v, c = (z[:, names.index(n)] for n in
                  ("temperature_c", "humidity_pct", "vibration_mm_s", "current_a"))
    score = 1.0 * t + 1.0 * v + 0.6 * c - 0.4 * h + 0.5 * t * v
    fault = (score > 1.0).astype(np.int64)
    flip = rng.random(rows) < noise
    fault[flip] = 1 - fault[flip]
    typical = np.array([m for m, _ in SENSORS.values()])
    spread = np.array([s for _, s in SENSORS.values()])
    return typical + spread * z, fault


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=4000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--noise", type=float, default=0.02, help="share of flipped labels")
    p.add_argument("--out", default=str(Path(__file__).with_name("readings.csv")))
    args = p.parse_args(argv)
    values, fault = readings(args.rows, args.seed, args.noise)
    with open(args.out, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow([*SENSORS, "fault"])
        for row, label in zip(values, fault):
            writer.writerow([f"{x:.3f}" for x in row] + [int(label)])
    print(f"wrote {args.out}: {args.rows} readings, {fault.mean():.1%} at fault")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
