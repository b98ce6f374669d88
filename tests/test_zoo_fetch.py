"""The zoo's downloads against a loopback HTTP server: checksum, resume with Range, offline errors; the
zoo CLI's list and fetch."""
from __future__ import annotations

import hashlib
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest

from cirlab.cli import main
from cirlab.errors import CirlabError
from cirlab.zoo import ZOO, WeightFile, ZooEntry, entries
from cirlab.zoo.fetch import download

PAYLOAD = bytes(range(256)) * 4096 + b"tail"          # 1 MiB + 4 bytes


class Files(BaseHTTPRequestHandler):
    files: ClassVar[dict[str, bytes]] = {}
    drop_once: ClassVar[set[str]] = set()
    ranges: ClassVar[list[str | None]] = []

    def do_GET(self):
        body = self.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        rng = self.headers.get("Range")
        type(self).ranges.append(rng)
        start = int(rng.split("=")[1].split("-")[0]) if rng else 0
        if start >= len(body):
            self.send_error(416)
            return
        self.send_response(206 if rng else 200)
        if rng:
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        if self.path in self.drop_once:          # promise the whole file, send part of it, drop the connection
            self.drop_once.discard(self.path)
            self.wfile.write(body[start:start + 300_000])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
            return
        self.wfile.write(body[start:])

    def log_message(self, *a):
        pass


@pytest.fixture()
def server():
    Files.files = {"/w.pt": PAYLOAD}
    Files.drop_once = set()
    Files.ranges = []
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Files)
    th = threading.Thread(target=srv.serve_forever, daemon=True)
    th.start()
    yield f"http://127.0.0.1:{srv.server_port}"
    srv.shutdown()
    srv.server_close()


def test_download_checks_the_checksum(server, tmp_path):
    good = hashlib.sha256(PAYLOAD).hexdigest()
    dest = download(f"{server}/w.pt", tmp_path / "w.pt", good, progress=False)
    assert dest.read_bytes() == PAYLOAD and not (tmp_path / "w.pt.part").exists()
    with pytest.raises(CirlabError, match=r"checksum mismatch for v.pt \(sha256 " + good):
        download(f"{server}/w.pt", tmp_path / "v.pt", "0" * 64, progress=False)
    assert not (tmp_path / "v.pt").exists()          # refused: never placed where the zoo would use it
    assert (tmp_path / "v.pt.bad").read_bytes() == PAYLOAD


def test_an_interrupted_download_resumes_with_range(server, tmp_path):
    Files.drop_once = {"/w.pt"}
    dest = download(f"{server}/w.pt", tmp_path / "w.pt", hashlib.sha256(PAYLOAD).hexdigest(), progress=False)
    assert dest.read_bytes() == PAYLOAD
    assert Files.ranges == [None, "bytes=300000-"]   # the second request asked only for the rest


def test_a_part_file_from_a_killed_run_is_resumed(server, tmp_path):
    (tmp_path / "w.pt.part").write_bytes(PAYLOAD[:123_456])
    download(f"{server}/w.pt", tmp_path / "w.pt", progress=False)
    assert (tmp_path / "w.pt").read_bytes() == PAYLOAD and Files.ranges == ["bytes=123456-"]


def test_offline_names_the_file_and_where_to_put_it(tmp_path):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()                                         # nothing listens there
    with pytest.raises(CirlabError, match=f"could not download http://127.0.0.1:{port}/w.pt .*place it at "
                                          f"{tmp_path / 'w.pt'}"):
        download(f"http://127.0.0.1:{port}/w.pt", tmp_path / "w.pt", progress=False)


@pytest.fixture()
def test_entry(server, monkeypatch, tmp_path):
    monkeypatch.setenv("CIRLAB_ZOO_DIR", str(tmp_path / "zoo"))
    e = ZooEntry(name="test:loopback", method="sum", backbone="tiny:world", paper="none",
                 weights=(WeightFile("w", "w.pt", url=f"{server}/w.pt", sha256=hashlib.sha256(PAYLOAD).hexdigest()),
                          WeightFile("hand", "hand.pt", source="https://example.invalid/page")))
    monkeypatch.setitem(ZOO._factories, e.name, lambda: e)
    monkeypatch.setitem(ZOO._help, e.name, "")
    return e


def test_cli_fetch_downloads_and_names_files_to_place_by_hand(test_entry, tmp_path, capsys):
    rc = main(["zoo", "fetch", "test:loopback", "--no-import"])
    err = capsys.readouterr().err
    assert rc == 2
    assert (tmp_path / "zoo/files/w.pt").read_bytes() == PAYLOAD
    assert f"hand.pt: not in the zoo cache (no direct download); download it from https://example.invalid/page " \
           f"and place it at {tmp_path / 'zoo/files/hand.pt'}" in err
    (tmp_path / "zoo/files/hand.pt").write_bytes(b"x")
    assert main(["zoo", "fetch", "test:loopback", "--no-import"]) == 0
    assert Files.ranges == [None]                     # the cached file was not downloaded again


def test_zoo_list_shows_every_entry_with_its_published_numbers(capsys):
    assert main(["zoo", "list"]) == 0
    out = capsys.readouterr().out
    names = {e.name for e in entries()}
    assert {"pic2word:vit-l14", "searle:vit-b32", "searle:vit-l14", "searle-oti:vit-l14", "lincir:vit-l14",
            "clip4cir:rn50x4-fashioniq", "clip4cir:rn50x4-cirr", "cig:vit-l14", "ip-cir:vit-l14"} <= names
    for e in entries():
        assert f"\n{e.name}: " in out
        for p in e.published:
            for k, v in p.metrics.items():
                assert f"{k} {v:g}" in out.split(f"\n{e.name}: ")[1].split("\n")[0]
    # the numbers as the facts about the official methods record them
    assert "searle:vit-l14: cirr test1 recall@1 24.24; circo test map@5 11.68" in out
    assert "lincir:vit-l14: cirr test1 recall@1 25.04; circo test map@5 12.59" in out
    assert "pic2word:vit-l14: cirr test1 recall@1 23.9, recall@5 51.7, recall@10 65.3, recall@50 87.8; " \
           "fashioniq val average/recall@10 24.7" in out
