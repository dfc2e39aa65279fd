"""Helpers of the service tests: a tiny real collection (images, captions, ProLIP-Tiny) and a live server thread."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from pathlib import Path

import httpx
import uvicorn
from PIL import Image, ImageDraw

COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (230, 200, 30)}
SHAPES = ("circle", "square", "triangle")
SIZES = ("small", "large")


def draw_scene(colour: str, shape: str, size: str, px: int = 64) -> Image.Image:
    """A grey canvas with one coloured shape: the images of the tiny test collection."""
    image = Image.new("RGB", (px, px), (128, 128, 128))
    draw = ImageDraw.Draw(image)
    r = px * (0.18 if size == "small" else 0.38)
    c = px / 2
    box = (c - r, c - r, c + r, c + r)
    if shape == "circle":
        draw.ellipse(box, fill=COLOURS[colour])
    elif shape == "square":
        draw.rectangle(box, fill=COLOURS[colour])
    else:
        draw.polygon([(c, c - r), (c + r, c + r), (c - r, c + r)], fill=COLOURS[colour])
    return image


def write_tiny_data(folder: Path) -> list[str]:
    """24 PNG images with one caption each (``name.png`` + ``name.txt``); returns the captions in order."""
    folder.mkdir(parents=True, exist_ok=True)
    captions = []
    for colour in COLOURS:
        for shape in SHAPES:
            for size in SIZES:
                name = f"{colour}_{shape}_{size}"
                draw_scene(colour, shape, size).save(folder / f"{name}.png")
                caption = f"a {size} {colour} {shape}"
                (folder / f"{name}.txt").write_text(caption + "\n", encoding="utf-8")
                captions.append(caption)
    return captions


@contextlib.contextmanager
def live_server(app, host: str = "127.0.0.1"):
    """Run ``app`` with uvicorn on ``host`` and a free port in a background thread; yields the base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    base = f"http://{host}:{port}"
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start within 30 s")
        time.sleep(0.02)
    assert httpx.get(base + "/health", timeout=10).status_code == 200
    try:
        yield base
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        sock.close()
