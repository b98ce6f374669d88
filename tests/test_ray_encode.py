"""Distributed gallery encoding on a local, loopback-only Ray matches the single-process path."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from cirlab.index import build_index, load_index
from cirlab.index.build import chunk_bounds, chunk_path, read_chunk

ray = pytest.importorskip("ray")


@pytest.fixture(scope="session")
def local_ray():
    """One Ray for the whole session (start-up is slow), started through the loopback-only settings."""
    from cirlab.netsafe import ray_init_kwargs

    if not ray.is_initialized():
        ray.init(**ray_init_kwargs(num_cpus=2, log_to_driver=False))  # _node_ip_address="127.0.0.1" (netsafe)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def world(small_world, tiny_config, tmp_path_factory):
    from cirlab.backbones import create_backbone
    from cirlab.data import load_dataset

    d = tmp_path_factory.mktemp("raybb")
    create_backbone("tiny:random", config=tiny_config, seed=7).save(d)
    return load_dataset(small_world / "test").gallery, create_backbone(f"tiny:{d}")


def test_ray_runs_on_loopback(local_ray):
    nodes = local_ray.nodes()
    assert nodes and all(n["NodeManagerAddress"] == "127.0.0.1" for n in nodes)
    assert os.environ.get("RAY_USAGE_STATS_ENABLED") == "0"


def test_ray_chunks_match_single_process_and_resume(local_ray, world, tmp_path):
    from cirlab.index.build import prepare_chunks, write_chunk
    from cirlab.index.ray_encode import encode_chunks_ray

    gallery, backbone = world
    n, chunk = len(gallery), 40
    want = backbone.encode_images(gallery.paths, batch_size=16, normalize=False)  # chunks hold raw features
    bounds = chunk_bounds(n, chunk)
    # an interrupted earlier run left chunks 0 and 2 finished: Ray must encode exactly the other rows
    cdir = prepare_chunks(backbone, gallery, tmp_path, chunk)
    for c in (0, 2):
        write_chunk(chunk_path(cdir, c), want[bounds[c][0]:bounds[c][1]])
    before = {c: chunk_path(cdir, c).stat().st_mtime_ns for c in (0, 2)}
    todo = n - sum(hi - lo for lo, hi in (bounds[0], bounds[2]))
    assert encode_chunks_ray(backbone, gallery, tmp_path, chunk_size=chunk, batch_size=16, num_actors=1,
                             progress=False) == todo
    assert {c: chunk_path(cdir, c).stat().st_mtime_ns for c in (0, 2)} == before
    got = torch.cat([read_chunk(chunk_path(cdir, c), hi - lo) for c, (lo, hi) in enumerate(bounds)])
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)  # the Ray features are the single-process ones
    assert encode_chunks_ray(backbone, gallery, tmp_path, chunk_size=chunk, progress=False) == 0


def test_cli_index_with_ray_equals_single_process(local_ray, world, small_world, tmp_path):
    """`cirlab index --ray` (using the running loopback Ray) builds the same index as the plain path."""
    from cirlab.cli import main

    gallery, backbone = world
    common = [str(small_world / "test"), "--backbone", backbone.spec, "--chunk-size", "50", "--batch-size", "16"]
    assert main(["index", *common, "--out", str(tmp_path / "ray"), "--index-type", "faiss:Flat", "--ray",
                 "--ray-actors", "2"]) == 0
    b = build_index(backbone, gallery, tmp_path / "local", "faiss:Flat", chunk_size=50, batch_size=16, progress=False)
    a, manifest = load_index(tmp_path / "ray", backbone.spec, backbone.embed_dim)
    assert a.ids == b.ids == gallery.ids and manifest["fingerprint"] == backbone.fingerprint()
    torch.testing.assert_close(a.vectors(gallery.ids), b.vectors(gallery.ids), atol=1e-5, rtol=0)


def test_actor_with_other_weights_is_refused(world, tiny_config):
    """The actor's own check (run here without Ray): a spec that loads other weights is refused."""
    from cirlab.backbones import create_backbone
    from cirlab.errors import CirlabError
    from cirlab.index.ray_encode import ChunkEncoder

    gallery, backbone = world
    enc = ChunkEncoder(backbone.spec, backbone.fingerprint(), batch_size=8)
    out = enc({"pos": [3, 4], "path": [str(gallery.paths[3]), str(gallery.paths[4])]})
    torch.testing.assert_close(torch.from_numpy(out["features"]), backbone.encode_images(gallery.paths[3:5], normalize=False))
    assert out["pos"].tolist() == [3, 4]
    with pytest.raises(CirlabError, match="fingerprint"):
        ChunkEncoder(backbone.spec, backbone.fingerprint(), batch_size=8,
                     loader=lambda: create_backbone("tiny:random", config=tiny_config, seed=99))


def _descendants(pid: int) -> set[int]:
    parent = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parent[int(stat.parent.name)] = int(fields[1])
    out, frontier = set(), {pid}
    while frontier:
        frontier = {c for c, p in parent.items() if p in frontier} - out
        out |= frontier
    return out


@pytest.mark.skipif(not shutil.which("ss"), reason="needs ss (iproute2) to list listening sockets")
def test_ray_listens_on_loopback_only(local_ray):
    """No process of this session's Ray (GCS, raylet, workers) listens on a non-loopback address."""
    local_ray.get(local_ray.remote(lambda: 1).remote())  # make sure a worker runs
    ours = _descendants(os.getpid())
    listening = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout.splitlines()
    mine = [line for line in listening if any(f"pid={p}," in line for p in ours)]
    assert mine, "found no listening socket of the Ray processes"
    bad = [line for line in mine if not line.split()[3].startswith(("127.0.0.1:", "[::1]:", "[::ffff:127.0.0.1]:"))]
    assert not bad, bad


@pytest.mark.timeout(180)   # before the check, Ray waited for the GPUs forever
def test_gpus_the_cluster_lacks_are_a_clear_error_not_a_hang(local_ray, world, tmp_path):
    from cirlab.errors import CirlabError
    from cirlab.index.ray_encode import encode_chunks_ray

    gallery, backbone = world
    assert local_ray.cluster_resources().get("GPU", 0) == 0
    with pytest.raises(CirlabError, match=r"8 actor\(s\) x 1 GPU each need 8 GPU\(s\), but the cluster has 0 "
                                          r"\(CPU 2\); pass gpus_per_actor=0"):
        encode_chunks_ray(backbone, gallery, tmp_path, num_actors=8, gpus_per_actor=1, progress=False)
    assert not list(tmp_path.rglob("*.safetensors"))                 # nothing was encoded


def test_pool_check_counts_every_actor():
    from cirlab.errors import CirlabError
    from cirlab.index.ray_encode import check_pool_fits

    check_pool_fits({"CPU": 4.0, "GPU": 2.0}, 2, 2.0, 1.0)          # exactly fits
    with pytest.raises(CirlabError, match=r"3 actor\(s\) x 1 GPU each need 3 GPU\(s\), but the cluster has 2"):
        check_pool_fits({"CPU": 4.0, "GPU": 2.0}, 3, 1.0, 1.0)
    with pytest.raises(CirlabError, match=r"3 actor\(s\) x 2 CPU each need 6 CPU\(s\), but the cluster has 4"):
        check_pool_fits({"CPU": 4.0}, 3, 2.0, 0.0)
