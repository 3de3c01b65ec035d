"""Checksums on cached activations: flipped bytes in a real HDF5 cache are caught the first time their rows
are read (read, the shuffled training stream, row metadata), as one line naming the file, the rows and the
remedy; a resumed build checksums exactly like a straight one; a cache from before checksums is read with
a warning; a truncated file is one line. Caches are built by ``build_cache`` from a tiny saved model.
"""

from __future__ import annotations

import itertools
import logging
import os
import shutil
import subprocess
import sys

import h5py
import numpy as np
import pytest
from test_faults_cli import LAYER, assert_one_line_error, tiny_pair, train_args  # noqa: F401  (fixture)

import jsae.data.cache as cache_mod
from jsae.cli import EXIT_BAD_INPUT
from jsae.data.cache import CACHE_FORMAT, CHECKSUMS, ActivationCache, build_cache

pytestmark = pytest.mark.faults  # make faults

N = 450
BLOCK = 64  # rows per chunk (and checksum block) of the caches built here: 16 dims x 4 bytes x 64 = 4 KiB


def build(pair: dict, out, monkeypatch, **kwargs) -> None:
    monkeypatch.setattr(cache_mod, "_CHUNK_BYTES", BLOCK * 16 * 4)  # several blocks in a tiny cache
    build_cache(pair["model"], LAYER, pair["root"] / "corpus", "train", N, 16, out, device="cpu", progress=False,
                batch_size=kwargs.pop("batch_size", 8), **kwargs)


@pytest.fixture(scope="module")
def blocks_cache(tiny_pair, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("blocks") / "train.h5"
    with pytest.MonkeyPatch.context() as mp:
        build(tiny_pair, out, mp)
    return out


def flip_bytes(path, dataset: str, chunk: int, offset: int = 100, n: int = 64) -> None:
    """Invert ``n`` bytes of the file inside chunk ``chunk`` of ``dataset`` (found with HDF5's chunk index)."""
    with h5py.File(path, "r") as f:
        ds = f[dataset]
        start = ds.id.get_chunk_info(chunk).byte_offset + offset if ds.chunks else ds.id.get_offset() + offset
    with open(path, "r+b") as fh:
        fh.seek(start)
        data = fh.read(n)
        fh.seek(start)
        fh.write(bytes(b ^ 0xFF for b in data))


def corrupt_copy(src, dst, dataset="x", chunk=3):
    shutil.copy(src, dst)
    flip_bytes(dst, dataset, chunk)
    return dst


def one_line_corrupt(exc: pytest.ExceptionInfo, path, rows: str | None = None) -> None:
    msg = str(exc.value)
    assert "\n" not in msg and str(path) in msg and "corrupt" in msg, msg
    assert f"delete {path} and re-run to rebuild it" in msg, msg
    if rows is not None:
        assert f"rows {rows}" in msg, msg


def test_the_build_writes_a_checksum_per_block(blocks_cache):
    with h5py.File(blocks_cache, "r") as f:
        assert f.attrs["format"] == CACHE_FORMAT and f.attrs["checksum"] == "crc32"
        assert f.attrs["checksum_rows"] == BLOCK == f["x"].chunks[0]
        sums = f[CHECKSUMS][()]
        x = f["x"][()]
        expected = [cache_mod.crc32(x[k * BLOCK : (k + 1) * BLOCK]) for k in range(-(-N // BLOCK))]
        assert sums.tolist() == expected  # every block, the short last one included
        assert all("crc32" in f[d].attrs for d in ("token_ids", "context_index", "position", "document", "contexts"))
    with ActivationCache.open(blocks_cache) as c:
        c.read()
        assert c._verified.all()  # verified once: later reads of these rows check nothing


def test_flipped_bytes_in_x_fail_read_with_one_line_naming_the_rows(blocks_cache, tmp_path):
    bad = corrupt_copy(blocks_cache, tmp_path / "bad.h5", chunk=3)
    with ActivationCache.open(bad) as c:
        good = c.read(0, 3 * BLOCK)  # blocks before the damage still read
        assert good.shape == (3 * BLOCK, 16)
        with pytest.raises(ValueError) as exc:
            c.read(3 * BLOCK + 5, 3 * BLOCK + 6)  # one row of the damaged block
        one_line_corrupt(exc, bad, f"{3 * BLOCK}:{4 * BLOCK}")
    with ActivationCache.open(bad) as c, pytest.raises(ValueError) as exc:
        c.read()
    one_line_corrupt(exc, bad, f"{3 * BLOCK}:{4 * BLOCK}")


@pytest.mark.parametrize("prefetch", [True, False])
def test_flipped_bytes_in_x_fail_the_training_stream(blocks_cache, tmp_path, prefetch):
    bad = corrupt_copy(blocks_cache, tmp_path / "bad.h5", chunk=5)
    with ActivationCache.open(bad) as c, pytest.raises(ValueError) as exc:
        list(itertools.islice(c.batches(32, seed=0, buffer_rows=128, prefetch=prefetch), N // 32 + 2))
    one_line_corrupt(exc, bad, f"{5 * BLOCK}:{6 * BLOCK}")
    with ActivationCache.open(bad) as c, pytest.raises(ValueError) as exc:  # spans that are not the blocks
        c.chunk_rows = 24
        list(itertools.islice(c.batches(32, seed=0, buffer_rows=48, prefetch=prefetch), N // 32 + 2))
    one_line_corrupt(exc, bad, f"{5 * BLOCK}:{6 * BLOCK}")


def test_the_last_short_block_is_checked_too(blocks_cache, tmp_path):
    last = N // BLOCK
    bad = shutil.copy(blocks_cache, tmp_path / "bad.h5")
    flip_bytes(bad, "x", last, offset=0, n=16)  # the first row of the last, short block
    with ActivationCache.open(bad) as c, pytest.raises(ValueError) as exc:
        c.read(N - 1, N)
    one_line_corrupt(exc, bad, f"{last * BLOCK}:{N}")


@pytest.mark.parametrize("dataset,reader", [("contexts", lambda c: c.contexts()), ("token_ids", lambda c: c.token_ids),
                                            ("document", lambda c: c.document)])
def test_flipped_bytes_in_row_metadata_are_caught(blocks_cache, tmp_path, dataset, reader):
    bad = shutil.copy(blocks_cache, tmp_path / "bad.h5")
    flip_bytes(bad, dataset, 0, offset=8, n=8)
    with ActivationCache.open(bad) as c, pytest.raises(ValueError) as exc:
        reader(c)
    one_line_corrupt(exc, bad)
    assert repr(dataset) in str(exc.value)


def test_training_on_a_corrupt_cache_stops_with_one_line(tiny_pair, tmp_path):  # noqa: F811
    """The real command: before checksums, training finished with rc 0 on the damaged rows."""
    pair = {**tiny_pair, "train": tmp_path / "train.h5"}
    corrupt_copy(tiny_pair["train"], pair["train"], chunk=0)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    env.pop("JSAE_DEBUG", None)
    res = subprocess.run([sys.executable, "-m", "jsae", *train_args(pair, tmp_path / "run", "--n-tokens", "320")],
                         capture_output=True, text=True, timeout=300, env=env)
    assert_one_line_error(res, EXIT_BAD_INPUT, "corrupt", str(pair["train"]), "re-run to rebuild it")
    assert not (tmp_path / "run").exists()


def test_a_resumed_build_has_the_same_checksums(tiny_pair, blocks_cache, tmp_path, monkeypatch):  # noqa: F811
    """Killed in the 3rd forward, then resumed: the checksums equal a straight build's and still catch damage."""
    out = tmp_path / "resumed.h5"
    real, calls = cache_mod.capture_mlp_inputs, {"n": 0}

    def dying(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("killed mid-build")
        return real(*args, **kwargs)

    monkeypatch.setattr(cache_mod, "capture_mlp_inputs", dying)
    with pytest.raises(KeyboardInterrupt):
        build(tiny_pair, out, monkeypatch)  # 2 x 8 contexts x 15 rows = 240 rows: blocks 0-2 done, block 3 half
    with h5py.File(cache_mod._partial_path(out), "r") as f:
        assert f.attrs["blocks_checksummed"] == 240 // BLOCK
    calls["n"] = -1000
    build(tiny_pair, out, monkeypatch)
    with h5py.File(out, "r") as a, h5py.File(blocks_cache, "r") as b:
        assert a[CHECKSUMS][()].tolist() == b[CHECKSUMS][()].tolist()
        assert np.array_equal(a["x"][()], b["x"][()])
    flip_bytes(out, "x", 1)
    with ActivationCache.open(out) as c, pytest.raises(ValueError, match=f"rows {BLOCK}:{2 * BLOCK}"):
        c.read()


def test_a_cache_from_before_checksums_is_read_with_a_warning(blocks_cache, tmp_path, caplog):
    old = shutil.copy(blocks_cache, tmp_path / "old.h5")
    with h5py.File(old, "r+") as f:
        for key in ("format", "checksum", "checksum_rows", "blocks_checksummed"):
            del f.attrs[key]
        del f[CHECKSUMS]
    with caplog.at_level(logging.WARNING, logger="jsae.data.cache"), ActivationCache.open(old) as c:
        assert c.read().shape == (N, 16)
    [warning] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "no checksums" in warning and f"delete {old} and re-run to rebuild it" in warning


@pytest.mark.parametrize("damage,match", [
    (lambda f: f.attrs.__setitem__("format", CACHE_FORMAT + 1), "written by a newer jsae"),
    (lambda f: f.__delitem__(CHECKSUMS), f"no valid {CHECKSUMS}"),
    (lambda f: f["contexts"].attrs.__delitem__("crc32"), "no crc32 on contexts"),
])
def test_missing_checksums_or_a_newer_format_are_refused(blocks_cache, tmp_path, damage, match):
    bad = shutil.copy(blocks_cache, tmp_path / "bad.h5")
    with h5py.File(bad, "r+") as f:
        damage(f)
    with pytest.raises(ValueError, match=match) as exc:
        ActivationCache.open(bad)
    assert "\n" not in str(exc.value) and str(bad) in str(exc.value)


@pytest.mark.parametrize("keep", [0.2, 0.6, 0.95])
def test_a_truncated_cache_is_one_line(blocks_cache, tmp_path, keep):
    bad = tmp_path / "cut.h5"
    data = blocks_cache.read_bytes()
    bad.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(ValueError) as exc:
        with ActivationCache.open(bad) as c:
            c.read()
    msg = str(exc.value)
    assert "\n" not in msg and f"delete {bad} and re-run to rebuild it" in msg, msg
