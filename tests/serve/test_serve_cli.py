"""``probclip serve``: a quickstart folder prepared and served, the API key from the environment, CLI errors."""

from __future__ import annotations

import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest
import torch

import probclip
from probclip.cli import main as probclip_main
from probclip.errors import UsageError
from probclip.serve.cli import API_KEY_ENV, is_quickstart_dir, load_indexes


def _lines(stream, sink: queue.Queue) -> None:
    for line in iter(stream.readline, ""):
        sink.put(line)
    sink.put(None)


@pytest.mark.slow
def test_serve_a_quickstart_folder_on_loopback_with_the_key_from_the_environment(tmp_path):
    quickstart = tmp_path / "quickstart-out"
    torch.manual_seed(0)
    probclip.create_model("ProLIP-Tiny").save_pretrained(quickstart / "model")
    assert is_quickstart_dir(quickstart)
    env = {**os.environ, API_KEY_ENV: "env-key-123", "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen([sys.executable, "-m", "probclip.cli", "serve", str(quickstart), "--port", "0"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=_lines, args=(process.stdout, lines), daemon=True).start()
    seen, url = [], None
    try:
        deadline = time.monotonic() + 240
        while url is None and time.monotonic() < deadline:
            line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            assert line is not None, "probclip serve exited early:\n" + "".join(seen)
            seen.append(line)
            found = re.search(r"listening on (http://127\.0\.0\.1:\d+/)", line)
            url = found.group(1) if found else None
        assert url, "no 'listening on' line:\n" + "".join(seen)
        output = "".join(seen)
        assert "quickstart folder: preparing its collection" in output
        assert "collection/image: 500 image rows, exact" in output and "collection/text:" in output
        for _ in range(100):  # the socket is bound before the line is printed; uvicorn starts right after
            try:
                health = httpx.get(url + "health", timeout=5)
                break
            except httpx.TransportError:
                time.sleep(0.1)
        assert health.status_code == 200
        assert httpx.get(url + "indices", timeout=5).status_code == 401
        indices = httpx.get(url + "indices", headers={"x-api-key": "env-key-123"}, timeout=5).json()
        assert [(i["name"], i["modality"]) for i in indices] == [("collection/image", "image"),
                                                                 ("collection/text", "text")]
        found = httpx.post(url + "search", json={"text": "a red circle", "k": 3, "index": "collection/text"},
                           headers={"x-api-key": "env-key-123"}, timeout=30)
        assert found.status_code == 200 and len(found.json()["results"]) == 3
        assert (quickstart / "collection" / "manifest.json").is_file()
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    assert process.returncode in (0, -signal.SIGINT, 130)


def test_serve_errors_are_one_line_with_their_exit_status(tmp_path, capsys, tiny_collection):
    # a missing or unusable collection is a data error (1), like in `probclip index` and `probclip search`
    assert probclip_main(["serve", str(tmp_path / "missing")]) == 1
    assert "is not a directory" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert probclip_main(["serve", str(tmp_path / "empty"), "--port", "0"]) == 1
    err = capsys.readouterr().err
    assert "has no manifest.json" in err and len(err.strip().splitlines()) == 1
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        assert probclip_main(["serve", str(tiny_collection), "--port", str(port)]) == 2
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err
    assert probclip_main(["serve", str(tiny_collection), "--port", "70000"]) == 2
    assert "--port must be from 0 to 65535" in capsys.readouterr().err


def test_load_indexes_shares_one_model(tiny_collection):
    model_dir = tiny_collection.parent / "model"
    given = load_indexes([tiny_collection], model=str(model_dir))
    assert [i.name for i in given] == ["collection/image", "collection/text"]
    assert given[0].model is given[1].model
    texts = load_indexes([tiny_collection], model=str(model_dir), modality="text")
    assert [i.modality for i in texts] == ["text"]
    with pytest.raises(UsageError, match="names no loadable model.*--model DIR"):
        load_indexes([tiny_collection])  # embedded with an in-memory model: the manifest names no folder
    with pytest.raises(UsageError, match="cannot be loaded"):
        load_indexes([tiny_collection], model=str(tiny_collection / "nothing-here"))


@pytest.mark.parametrize(("argv", "env", "named"), [
    ([], "", f"${API_KEY_ENV}"),
    ([], " \t", f"${API_KEY_ENV}"),
    ([], "cl\u00e9", "'\u00e9'"),
    (["--api-key", ""], "a-good-key", "--api-key"),  # an empty option never switches the environment's key off
])
def test_an_unusable_api_key_is_a_usage_error(tmp_path, capsys, monkeypatch, argv, env, named):
    monkeypatch.setenv(API_KEY_ENV, env)
    assert probclip_main(["serve", str(tmp_path / "absent"), *argv]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and named in err and "Traceback" not in err
