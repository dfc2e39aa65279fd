"""What the input checks cost and save, in one process on the CPU.

1. Peak resident memory of decoding and preprocessing (224 px) a batch of normal photos-sized images vs a batch
   holding 100-megapixel PNG bombs, with the pixel limit and with the limit lifted (the process's peak is reset
   before each batch: Linux ``/proc/self/clear_refs``). Ratio: batch with bombs / normal batch.
2. Time of the evaluation readers' check of every image (``drop_unreadable_images``: a draft-mode decode) vs the
   decode + preprocessing that encoding does anyway. Ratio: check / decode + preprocess (the overhead the check
   adds to reading an evaluation set).

    python benchmarks/bench_input_checks.py [--images 64] [--size 640] [--bombs 2]
"""

from __future__ import annotations

import argparse
import re
import tempfile
import time
from pathlib import Path

from PIL import Image

from probclip.eval.image_check import unreadable_images
from probclip.eval.readers import ImageItem
from probclip.limits import set_limits
from probclip.transforms import image_transform

VISION = {"image_size": 224, "image_mean": (0.5, 0.5, 0.5), "image_std": (0.5, 0.5, 0.5)}


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")


def _peak_bytes() -> int:
    return int(re.search(r"VmHWM:\s+(\d+)", Path("/proc/self/status").read_text()).group(1)) * 1024


def _batch_peak(items: list[ImageItem], transform) -> int:
    _reset_peak()
    tensors = []
    for item in items:
        try:
            tensors.append(transform(item.open()))
        except ValueError:
            pass  # refused by the pixel limit: skipped like a training sample
    return _peak_bytes()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--size", type=int, default=640, help="side of the normal (JPEG) images")
    parser.add_argument("--bombs", type=int, default=2)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp())
    normal = []
    for i in range(args.images):
        path = root / f"{i}.jpg"
        Image.effect_mandelbrot((args.size, args.size), (-2 + i / 100, -1.5, 1, 1.5), 60).convert("RGB").save(path)
        normal.append(ImageItem(str(path), path))
    Image.new("1", (10_000, 10_001)).save(root / "bomb.png")
    bombs = normal[: 8 - args.bombs] + [ImageItem(f"bomb{i}", root / "bomb.png") for i in range(args.bombs)]
    transform = image_transform(VISION)
    _batch_peak(normal[:8], transform)  # warm-up
    base = _batch_peak(normal[:8], transform)
    guarded = _batch_peak(bombs, transform)
    set_limits(max_image_pixels=200_000_000)
    lifted = _batch_peak(bombs, transform)
    set_limits()
    print(f"peak RSS, batch of 8: normal {base / 2**20:.0f} MiB; with {args.bombs} bombs {guarded / 2**20:.0f} MiB "
          f"({guarded / base:.2f}x); limit lifted {lifted / 2**20:.0f} MiB ({lifted / base:.2f}x)")

    pngs = []
    for item in normal:
        target = item.path.with_suffix(".png")
        Image.open(item.path).save(target)
        pngs.append(ImageItem(str(target), target))
    for kind, items in (("JPEG", normal), ("PNG", pngs)):
        start = time.perf_counter()
        for item in items:
            transform(item.open())
        decode = time.perf_counter() - start
        start = time.perf_counter()
        assert not unreadable_images(items)
        check = time.perf_counter() - start
        print(f"evaluation image check, {args.images} {args.size}px {kind}s: {check:.2f} s vs {decode:.2f} s to "
              f"decode and preprocess them: {check / decode:.2f}x of the reading cost")

if __name__ == "__main__":
    main()
