"""Helpers shared by the service tests: hand-written PNGs and rankings computed from an index's vectors."""
from __future__ import annotations

import os
import queue
import re
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import httpx
import numpy as np
import pytest
import torch
import uvicorn

from cirlab.backbones import create_backbone
from cirlab.data import load_dataset
from cirlab.index import build_index
from cirlab.retrieval import Retriever


@pytest.fixture(scope="module")
def world(small_world):
    return load_dataset(small_world / "test")


@pytest.fixture(scope="module")
def retriever(world, tiny_config, tmp_path_factory) -> Retriever:
    """``sum`` over an index of the small world's test gallery, with a tiny random backbone."""
    backbone = create_backbone("tiny:random", config=tiny_config)
    index = build_index(backbone, world.gallery, tmp_path_factory.mktemp("serve-index"), progress=False)
    return Retriever(backbone, index, "sum", {i: str(p) for i, p in zip(world.gallery.ids, world.gallery.paths)})


def png_bytes(path: Path) -> bytes:
    return Path(path).read_bytes()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def bomb_png(width: int, height: int) -> bytes:
    """A valid, all-black 1-bit PNG of width x height, written by hand (a few KB that decode to width*height)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    row = b"\x00" * (1 + (width + 7) // 8)
    z = zlib.compressobj(9)
    idat = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def expected_scores(retriever: Retriever, query: torch.Tensor) -> dict[str, float]:
    """Cosine score of every gallery image for one query vector, from the index's stored vectors."""
    ids = retriever.index.ids
    vecs = retriever.index.vectors(ids)
    scores = (vecs @ query).numpy()
    return dict(zip(ids, scores.tolist()))


def check_ranking(results: list[dict], scores: dict[str, float], k: int, exclude: set[str] = frozenset()):
    """The answer is the top-k of ``scores`` (ties may come in any order)."""
    want = sorted((s for i, s in scores.items() if i not in exclude), reverse=True)[:k]
    got = [r["score"] for r in results]
    assert [r["rank"] for r in results] == list(range(1, k + 1))
    np.testing.assert_allclose(got, want, atol=1e-5)
    for r in results:
        assert r["id"] not in exclude
        assert r["score"] == pytest.approx(scores[r["id"]], abs=1e-5)


@contextmanager
def live_server(app, **config) -> Iterator[str]:
    """``app`` under uvicorn in a thread, on 127.0.0.1 and a free port; yields its base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", **config))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not server.started and time.time() < deadline:
        time.sleep(0.02)
    assert server.started, "uvicorn did not start"
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


@contextmanager
def cli_server(index_dir: Path, log: Path, *args: str, env: dict[str, str] | None = None, token: str | None = None
               ) -> Iterator[tuple[str, subprocess.Popen]]:
    """`cirlab serve --index index_dir *args` in a subprocess on 127.0.0.1 with a port the OS picks, its output in
    ``log``; yields (the base URL it prints, once /health answers; the process)."""
    proc = subprocess.Popen([sys.executable, "-m", "cirlab", "serve", "--index", str(index_dir), "--port", "0",
                             "--host", "127.0.0.1", "--log-level", "warning", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        with open(log, "w") as f:
            for line in proc.stdout:  # type: ignore[union-attr]
                f.write(line)
                f.flush()
                lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    url = None
    deadline = time.time() + 60
    headers = {"authorization": f"Bearer {token}"} if token else {}
    try:
        while url is None and time.time() < deadline and proc.poll() is None:
            try:
                m = re.search(r"(http://127\.0\.0\.1:\d+)/", lines.get(timeout=1))
            except queue.Empty:
                continue
            url = m.group(1) if m else None
        assert url, f"cirlab serve did not start:\n{log.read_text()}"
        while time.time() < deadline:
            try:
                if httpx.get(f"{url}/health", timeout=2, headers=headers).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        yield url, proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
