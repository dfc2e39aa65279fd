"""Peak memory of ``probclip serve`` under 8 concurrent worst-case image uploads, as a ratio to its idle memory.

Writes a small collection (500 random Gaussian image rows for ProLIP-Tiny, flat index), starts ``probclip serve``
in a child process, warms it (a text search and a small image search), reads its resident memory (``VmRSS``), and
then, for each kind of upload, resets the kernel's peak-RSS mark (``/proc/PID/clear_refs``), sends 8 copies at once
from 8 threads and reads the peak (``VmHWM``). The uploads are under every limit of the service:

- ``thin``: a 100000 x 1 PNG (a few hundred bytes): decoding is cheap, resizing its short side to the model's input
  size is not (the service refuses it from its header: 413);
- ``thin-allowed``: a 39000 x 1 PNG, the most elongated image ProLIP-Tiny's 32-pixel input lets through (its resize
  makes 39.9 megapixels, under the 40-megapixel limit);
- ``36MP-png``: a 6000 x 6000 PNG (a smooth gradient, about 0.2 MB), 108 MB once decoded;
- ``36MP-jpeg``: the same picture as a JPEG.

Each kind is run against the service as started (``--max-concurrent-decodes 1``, the default) and, as the
baseline, with the bound lifted (``--max-concurrent-decodes 8``). Linux only (``/proc``).

    .venv/bin/python benchmarks/bench_upload_memory.py [--clients 8] [--decodes 1]
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import threading
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from bench_serve import make_collection, start_server

KINDS = ("thin", "thin-allowed", "36MP-png", "36MP-jpeg")


def payload(kind: str) -> bytes:
    """The encoded bytes of one worst-case upload."""
    if kind in ("thin", "thin-allowed"):
        image = Image.new("RGB", (100_000 if kind == "thin" else 39_000, 1), (200, 30, 30))
        fmt = "PNG"
    else:
        ramp = np.linspace(0, 255, 6000, dtype=np.float32)
        pixels = np.stack([np.add.outer(ramp, ramp) / 2, np.add.outer(ramp, -ramp) / 2 + 128,
                           np.broadcast_to(ramp[:, None], (6000, 6000))], axis=-1)
        image = Image.fromarray(pixels.clip(0, 255).astype(np.uint8), "RGB")
        fmt = "PNG" if kind == "36MP-png" else "JPEG"
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **({"quality": 85} if fmt == "JPEG" else {"compress_level": 9}))
    return buffer.getvalue()


def status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/{pid}/status")


def reset_peak(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # resets VmHWM to the current RSS (Linux >= 4.0)


def burst(url: str, data: bytes, clients: int) -> list[int]:
    """``clients`` simultaneous uploads of ``data``; returns their status codes."""
    statuses: list[int] = []
    start = threading.Barrier(clients)

    def one():
        start.wait()
        answer = httpx.post(url + "/search", files={"image": ("q", data)}, data={"k": "5"}, timeout=600)
        statuses.append(answer.status_code)

    threads = [threading.Thread(target=one) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return statuses


def run(collection: Path, decodes: int, payloads: dict[str, bytes], clients: int) -> tuple[int, dict]:
    """Idle RSS (kB) and, per kind, (peak RSS kB, statuses) of one service."""
    process, url = start_server(collection, 1, extra=["--max-concurrent-decodes", str(decodes)])
    try:
        small = io.BytesIO()
        Image.new("RGB", (64, 64), (10, 200, 10)).save(small, format="PNG")
        httpx.post(url + "/search", json={"text": "a green square", "k": 5}, timeout=60)
        burst(url, small.getvalue(), 2)
        idle = status_kb(process.pid, "VmRSS")
        peaks = {}
        for kind, data in payloads.items():
            reset_peak(process.pid)
            statuses = burst(url, data, clients)
            peaks[kind] = (status_kb(process.pid, "VmHWM"), sorted(set(statuses)))
        return idle, peaks
    finally:
        process.terminate()
        process.wait(timeout=30)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--decodes", type=int, default=1, help="the service's --max-concurrent-decodes")
    parser.add_argument("--rows", type=int, default=500)
    args = parser.parse_args(argv)
    payloads = {kind: payload(kind) for kind in KINDS}
    print("uploads: " + ", ".join(f"{k} {len(v) / 1e3:.1f} kB" for k, v in payloads.items()), flush=True)
    worst = 0.0
    with tempfile.TemporaryDirectory(prefix="bench-upload-") as tmp:
        collection, _ = make_collection(Path(tmp), args.rows)
        for decodes in (args.decodes, args.clients):
            idle, peaks = run(collection, decodes, payloads, args.clients)
            label = "bounded" if decodes == args.decodes else "baseline, bound lifted"
            for kind, (peak, statuses) in peaks.items():
                ratio = peak / idle
                if decodes == args.decodes:
                    worst = max(worst, ratio)
                print(f"--max-concurrent-decodes {decodes} ({label}): {args.clients} x {kind}: idle RSS "
                      f"{idle / 1024:.0f} MiB, peak {peak / 1024:.0f} MiB, ratio {ratio:.2f}; statuses {statuses}",
                      flush=True)
    print(f"largest peak / idle ratio with the bound: {worst:.2f} (target <= 1.5)")
    return 0 if worst <= 1.5 else 1


if __name__ == "__main__":
    sys.exit(main())
