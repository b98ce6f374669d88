"""Load benchmark of `cirlab serve` on loopback: p50/p99 latency and throughput at 1, 8 and 32 clients.

Starts `cirlab serve` in a subprocess on 127.0.0.1 (a free port), then, for each
concurrency level, keeps that many clients issuing POST /search requests until
``--requests`` are done or ``--seconds`` have passed (whichever comes first).
Two request kinds are measured: a gallery-id reference and an uploaded PNG. While
the search clients run, a separate client polls GET /health; its latency shows
whether model work blocks the event loop.

    .venv/bin/python benchmarks/serve_load.py                 # builds a small world + index in a temp dir
    .venv/bin/python benchmarks/serve_load.py --index DIR     # an existing index (its manifest lists the files)

``--mixed`` measures the hardened service under mixed load instead: 32 clients (by default) of
which most send cheap queries (``sum`` by gallery id and with a small PNG upload), some upload
large (4000 x 4000) PNGs and some use an expensive method (``searle-oti``, listed with
``--methods``). It prints p50/p99 latency of the cheap queries alone (the reference, same run) and
under the mixed load, the answers and refusals of each kind, and the server's resident size
(idle, peak, after).

    .venv/bin/python benchmarks/serve_load.py --mixed [--clients 32] [--seconds 30]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    pos = (len(s) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def build_small_index(work: Path, backbone: str, queries: int) -> tuple[Path, list[str], list[Path], list[str]]:
    from cirlab.backbones import create_backbone
    from cirlab.data import load_dataset
    from cirlab.index import build_index
    from cirlab.world import WorldConfig, generate_world

    generate_world(work / "world", WorldConfig(seed=1).small(queries), splits=("test",), progress=False)
    ds = load_dataset(work / "world" / "test")
    build_index(create_backbone(backbone), ds.gallery, work / "index", progress=False)
    return work / "index", ds.gallery.ids, ds.gallery.paths, [t.caption for t in ds.triplets]


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc), to see where the CPU goes."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")


def status_mib(pid: int, field: str) -> float:
    """A size field of /proc/PID/status (VmRSS: resident now, VmHWM: peak resident), in MiB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def start_server(index: Path, workers: int, torch_threads: int, extra: tuple[str, ...] = ()
                 ) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "cirlab", "serve", "--index", str(index), "--host", "127.0.0.1",
                             "--port", "0", "--log-level", "warning", "--model-workers", str(workers),
                             "--torch-threads", str(torch_threads), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.time() + 60
    for line in proc.stdout:  # type: ignore[union-attr]
        m = re.search(r"(http://127\.0\.0\.1:\d+)/", line)
        if m:
            url = m.group(1)
            break
        if time.time() > deadline:
            break
    else:
        raise SystemExit(f"cirlab serve did not start (exit code {proc.poll()})")
    while time.time() < deadline:
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.1)
    proc.terminate()
    raise SystemExit("cirlab serve did not answer /health")


async def run_level(url: str, clients: int, kind: str, max_requests: int, max_seconds: float, ids: list[str],
                    files: list[bytes], texts: list[str], k: int) -> dict:
    latencies: list[float] = []
    health: list[float] = []
    errors = 0
    issued = 0
    stop = asyncio.Event()
    done_flag = threading.Event()
    limits = httpx.Limits(max_connections=clients + 1, max_keepalive_connections=clients + 1)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as http:
        async def one(n: int) -> None:
            nonlocal errors
            text = texts[n % len(texts)]
            t0 = time.perf_counter()
            if kind == "id":
                r = await http.post("/search", data={"reference_id": ids[n % len(ids)], "text": text, "k": str(k)})
            else:
                r = await http.post("/search", data={"text": text, "k": str(k)},
                                    files={"image": ("ref.png", files[n % len(files)], "image/png")})
            dt = time.perf_counter() - t0
            if r.status_code == 200:
                latencies.append(dt)
            else:
                errors += 1

        async def client() -> None:
            nonlocal issued
            while not stop.is_set() and issued < max_requests:
                n = issued
                issued += 1
                await one(n)

        def poll_health() -> None:  # its own thread and connection, apart from the load clients
            with httpx.Client(base_url=url, timeout=60) as h:
                while not done_flag.is_set():
                    t0 = time.perf_counter()
                    if h.get("/health").status_code == 200:
                        health.append(time.perf_counter() - t0)
                    done_flag.wait(0.05)

        for n in range(min(4, clients)):  # warm-up (thumbnail cache and method cache untouched: /search only)
            await one(n)
        latencies.clear()
        issued = 0
        before = (await http.get("/health")).json()["searches"]
        done_flag = threading.Event()
        poller = threading.Thread(target=poll_health)
        poller.start()
        t0 = time.perf_counter()
        workers = [asyncio.create_task(client()) for _ in range(clients)]
        done, pending = await asyncio.wait(workers, timeout=max_seconds)
        stop.set()
        await asyncio.gather(*pending)
        elapsed = time.perf_counter() - t0
        done_flag.set()
        await asyncio.to_thread(poller.join)
        after = (await http.get("/health")).json()["searches"]
    ms = [x * 1000 for x in latencies]
    return {"kind": kind, "clients": clients, "requests": len(ms), "errors": errors, "seconds": round(elapsed, 2),
            "p50_ms": round(percentile(ms, 0.5), 1), "p99_ms": round(percentile(ms, 0.99), 1),
            "mean_ms": round(statistics.fmean(ms), 1) if ms else float("nan"),
            "throughput_rps": round(len(ms) / elapsed, 1),
            "health_p99_ms": round(percentile([h * 1000 for h in health], 0.99), 1),
            "mean_batch": round((after["queries"] - before["queries"]) / max(1, after["batches"] - before["batches"]), 2)}


def stop_server(proc: subprocess.Popen) -> None:
    """Terminate the server (kill it if it does not stop within 10 s)."""
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


def large_png(side: int) -> bytes:
    """A side x side PNG that compresses well (a smooth pattern), so it fits the upload limit."""
    import io

    import numpy as np
    from PIL import Image

    y, x = np.mgrid[0:side, 0:side]
    buf = io.BytesIO()
    Image.fromarray(np.stack([x % 256, y % 256, (x // 16 + y // 16) % 256], -1).astype(np.uint8)).save(buf, "PNG")
    return buf.getvalue()


async def run_mixed(url: str, clients: int, seconds: float, ids: list[str], small: list[bytes], large: bytes,
                    texts: list[str], k: int, slow_method: str, shares: tuple[int, int]) -> dict[str, dict]:
    """``clients`` clients for ``seconds``: ``shares`` = (large-upload clients, expensive-method clients), the rest
    cheap. Per kind: latencies of answered requests and counts of each status."""
    kinds = ["large"] * shares[0] + ["slow"] * shares[1]
    kinds += ["cheap"] * (clients - len(kinds))
    out: dict[str, dict] = {kind: {"ms": [], "status": {}} for kind in ("cheap", "large", "slow")}
    deadline = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as http:
        async def client(n: int, kind: str) -> None:
            i = n
            while time.perf_counter() < deadline:
                i += clients
                text = texts[i % len(texts)]
                t0 = time.perf_counter()
                if kind == "large":
                    r = await http.post("/search", data={"text": text, "k": str(k)},
                                        files={"image": ("large.png", large, "image/png")})
                elif kind == "slow":
                    r = await http.post("/search", data={"reference_id": ids[i % len(ids)], "text": text,
                                                         "k": str(k), "method": slow_method})
                elif i % 2:
                    r = await http.post("/search", data={"reference_id": ids[i % len(ids)], "text": text, "k": str(k)})
                else:
                    r = await http.post("/search", data={"text": text, "k": str(k)},
                                        files={"image": ("small.png", small[i % len(small)], "image/png")})
                dt = (time.perf_counter() - t0) * 1000
                out[kind]["status"][r.status_code] = out[kind]["status"].get(r.status_code, 0) + 1
                if r.status_code == 200:
                    out[kind]["ms"].append(dt)
                elif r.status_code == 503:
                    await asyncio.sleep(0.2)  # the expensive queue is full: back off a little

        await asyncio.gather(*(client(n, kind) for n, kind in enumerate(kinds)))
    return out


def mixed(args: argparse.Namespace, index: Path, ids: list[str], files: list[bytes], texts: list[str]) -> int:
    large = large_png(args.large_side)
    extra = ("--methods", f"sum,image,{args.slow_method}", "--slow-workers", "1")
    proc, url = start_server(index, args.model_workers, args.torch_threads, extra)
    try:
        print(f"server {url}  ({len(ids)} images)  {args.clients} clients for {args.seconds:g} s: "
              f"{args.large_clients} upload {args.large_side}x{args.large_side} PNGs ({len(large) // 1024} KiB), "
              f"{args.slow_clients} use {args.slow_method}, the rest cheap sum queries (gallery id / small PNG); "
              f"cpus={os.cpu_count()}  load average {os.getloadavg()[0]:.1f}", flush=True)
        for seconds in (5.0, args.seconds / 2):  # a warm-up (discarded), then the cheap queries alone: the reference
            alone = asyncio.run(run_mixed(url, args.clients, seconds, ids, files, large, texts, args.k,
                                          args.slow_method, (0, 0)))["cheap"]
        idle = status_mib(proc.pid, "VmRSS")
        hwm0 = status_mib(proc.pid, "VmHWM")
        load = asyncio.run(run_mixed(url, args.clients, args.seconds, ids, files, large, texts, args.k,
                                     args.slow_method, (args.large_clients, args.slow_clients)))
        peak = status_mib(proc.pid, "VmHWM")
        time.sleep(1.0)
        after = status_mib(proc.pid, "VmRSS")
        time.sleep(9.0)
        after10 = status_mib(proc.pid, "VmRSS")
        health = httpx.get(url + "/health", timeout=30).json()["searches"]
    finally:
        stop_server(proc)
    print(f"{'kind':28s} {'answered':>8s} {'p50 ms':>8s} {'p99 ms':>8s}  statuses")
    rows = [("cheap, alone (reference)", alone)] + [(f"{k} under mixed load", load[k]) for k in ("cheap", "large",
                                                                                                  "slow")]
    for name, row in rows:
        ms = row["ms"]
        print(f"{name:28s} {len(ms):8d} {percentile(ms, 0.5):8.1f} {percentile(ms, 0.99):8.1f}  {row['status']}")
    ratio = percentile(load["cheap"]["ms"], 0.99) / percentile(alone["ms"], 0.99)
    print(f"cheap p99 under mixed load / alone: {ratio:.2f}x  (goal: p99 < 1000 ms with {args.clients} clients)")
    print(f"server RSS: idle {idle:.0f} MiB (peak before the mixed load {hwm0:.0f}), peak {peak:.0f} MiB, "
          f"1 s after {after:.0f} MiB, 10 s after {after10:.0f} MiB; decoded uploads in flight peaked at "
          f"{health['decoded_bytes_peak'] / 2**20:.0f} MiB (budget 512 MiB)")
    print(f"load average at the end: {os.getloadavg()[0]:.1f} (a shared machine: other work skews these numbers)")
    if args.json:
        args.json.write_text(json.dumps({"alone": alone, "mixed": load, "rss_mib": {"idle": idle, "peak": peak,
                                                                                   "after": after, "after10": after10}}, indent=1))
    return 1 if any(s >= 500 for row in (alone, *load.values()) for s in row["status"]) else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--index", type=Path, help="existing index directory (default: build a small one)")
    ap.add_argument("--backbone", default="tiny:random", help="backbone for the built index (default tiny:random)")
    ap.add_argument("--queries", type=int, default=60, help="size of the generated world (small(N))")
    ap.add_argument("--clients", default="1,8,32", help="concurrency levels")
    ap.add_argument("--kinds", default="id,upload", help="request kinds: id (gallery id), upload (PNG)")
    ap.add_argument("--requests", type=int, default=300, help="requests per level at most")
    ap.add_argument("--seconds", type=float, default=15.0, help="seconds per level at most")
    ap.add_argument("--model-workers", type=int, default=2, help="server's --model-workers")
    ap.add_argument("--torch-threads", type=int, default=0, help="server's --torch-threads (0: torch default)")
    ap.add_argument("-k", type=int, default=12)
    ap.add_argument("--json", type=Path, help="also write the rows to this JSON file")
    ap.add_argument("--mixed", action="store_true", help="the mixed-load scenario (see above) instead of the levels")
    ap.add_argument("--large-clients", type=int, default=4, help="--mixed: clients uploading large PNGs")
    ap.add_argument("--large-side", type=int, default=4000, help="--mixed: side of the large PNGs")
    ap.add_argument("--slow-clients", type=int, default=4, help="--mixed: clients using the expensive method")
    ap.add_argument("--slow-method", default="searle-oti", help="--mixed: the expensive method")
    args = ap.parse_args()
    if args.mixed and args.clients == "1,8,32":
        args.clients = "32"

    with tempfile.TemporaryDirectory(prefix="cirlab-serve-bench-") as tmp:
        if args.index:
            from cirlab.index import read_manifest

            m = read_manifest(args.index)
            index, ids, paths = args.index, m["ids"], [Path(p) for p in m.get("paths", [])]
            texts = ["make it red", "add a small blue circle", "remove the square", "move it to the left"]
        else:
            index, ids, paths, texts = build_small_index(Path(tmp), args.backbone, args.queries)
        files = [p.read_bytes() for p in paths[:32] if p.is_file()]
        if args.mixed:
            args.clients = int(args.clients)
            args.seconds = args.seconds if args.seconds != 15.0 else 30.0
            return mixed(args, index, ids, files, texts)
        proc, url = start_server(index, args.model_workers, args.torch_threads)
        rows = []
        try:
            print(f"server {url}  index {index}  ({len(ids)} images)  model workers {args.model_workers}  "
                  f"torch threads {args.torch_threads or 'default'}  "
                  f"k={args.k}  cpus={os.cpu_count()}  load average {os.getloadavg()[0]:.1f}")
            print(f"{'kind':7s} {'clients':>7s} {'reqs':>5s} {'err':>4s} {'p50 ms':>8s} {'p99 ms':>8s} "
                  f"{'req/s':>7s} {'health p99 ms':>14s} {'mean batch':>10s} {'cpu ms/req server':>17s} {'client':>6s}")
            for kind in args.kinds.split(","):
                if kind == "upload" and not files:
                    print("upload: no gallery files to upload; skipped")
                    continue
                for c in [int(x) for x in args.clients.split(",")]:
                    cpu0, srv0 = time.process_time(), process_cpu_seconds(proc.pid)
                    row = asyncio.run(run_level(url, c, kind, args.requests, args.seconds, ids, files, texts, args.k))
                    n = max(1, row["requests"])
                    row["server_cpu_ms_per_req"] = round((process_cpu_seconds(proc.pid) - srv0) * 1000 / n, 2)
                    row["client_cpu_ms_per_req"] = round((time.process_time() - cpu0) * 1000 / n, 2)
                    rows.append(row)
                    print(f"{kind:7s} {c:7d} {row['requests']:5d} {row['errors']:4d} {row['p50_ms']:8.1f} "
                          f"{row['p99_ms']:8.1f} {row['throughput_rps']:7.1f} {row['health_p99_ms']:14.1f} {row['mean_batch']:10.2f} "
                          f"{row['server_cpu_ms_per_req']:17.2f} {row['client_cpu_ms_per_req']:6.2f}",
                          flush=True)
        finally:
            stop_server(proc)
    for kind in {r["kind"] for r in rows}:
        base = next((r for r in rows if r["kind"] == kind and r["clients"] == 1), None)
        if base and base["throughput_rps"]:
            ratios = ", ".join(f"{r['clients']} clients {r['throughput_rps'] / base['throughput_rps']:.2f}x"
                               for r in rows if r["kind"] == kind and r["clients"] != 1)
            print(f"{kind}: throughput relative to 1 client: {ratios}")
    print(f"load average at the end: {os.getloadavg()[0]:.1f} (other work on the machine skews these numbers)")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 1 if any(r["errors"] for r in rows) else 0


if __name__ == "__main__":
    import _machine

    sys.exit(_machine.run(main))
