"""Write a tiny stand-in for CIFAR-10 in its "python version" format, to try the vision example
without the real data set (nothing is downloaded).

``cifar-10-batches-py/data_batch_1`` .. ``data_batch_N`` next to this script, each a pickled dict
``{b"data": uint8 array (n, 3072), b"labels": [int, ...]}`` exactly like the real batches (3072 =
3 channels x 32 x 32, channel-major). The pattern to learn: every image is noise plus a blurry
blob, and its class (0, 1 or 2) is the colour channel (red, green or blue) that is brightest on
average. Only 3 of the 10 CIFAR-10 classes occur, so chance is 1/3. Seeded.

    python make_tiny_cifar.py                     # 2 batches of 300 images
    python make_tiny_cifar.py --batches 5 --per-batch 1000 --out /tmp/tiny
"""

from __future__ import annotations

import argparse
import pickle
from pathlib import Path

import numpy as np


def images(count: int, rng: np.random.Generator) -> tuple[np.ndarray, list[int]]:
    """(uint8 (count, 3072), labels): the labelled channel is brighter by 25..60 levels."""
    labels = rng.integers(0, 3, size=count)
    base = rng.uniform(60, 150, size=(count, 1, 1, 1))  # overall brightness of each image
    noise = rng.normal(0, 30, size=(count, 3, 32, 32))
    yy, xx = np.mgrid[0:32, 0:32]
    cy, cx = rng.uniform(8, 24, size=(2, count, 1, 1))
    blob = 60 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 60.0)  # (count, 32, 32)
    pixels = base + noise + blob[:, None]
    boost = rng.uniform(25, 60, size=count)
    pixels[np.arange(count), labels] += boost[:, None, None]
    data = np.clip(pixels, 0, 255).astype(np.uint8).reshape(count, 3 * 32 * 32)
    return data, [int(k) for k in labels]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batches", type=int, default=2, help="data_batch_1 .. data_batch_N (<= 5)")
    p.add_argument("--per-batch", type=int, default=300, help="images per batch")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(Path(__file__).with_name("cifar-10-batches-py")),
                   help="folder to write the batches into")
    args = p.parse_args(argv)
    if not 1 <= args.batches <= 5:
        p.error("--batches must be 1..5 (CIFAR-10 has data_batch_1 .. data_batch_5)")
    rng = np.random.default_rng(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for i in range(1, args.batches + 1):
        data, labels = images(args.per_batch, rng)
        batch = {b"batch_label": f"tiny batch {i} of {args.batches}".encode(),
                 b"labels": labels, b"data": data}
        with open(out / f"data_batch_{i}", "wb") as fh:
            pickle.dump(batch, fh, protocol=2)
    print(f"wrote {args.batches} batches of {args.per_batch} images to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
