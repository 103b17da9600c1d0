"""Grid cache: keys from hashes only, atomic round trip, damaged entries treated as missing."""

from __future__ import annotations

import numpy as np

from vitx_core.benchmark.cache import CachedGrid, CachedPrediction, GridCache, file_hash


def test_round_trip_and_keys(tmp_path):
    c = GridCache(tmp_path, "abc123", {"size": [64, 48]})
    e = CachedGrid(np.arange(12, dtype=np.float32).reshape(4, 3), 2, 1.5, 0.8, {"max": 11.0})
    c.put("imghash", "rollout", '{"x":1}', e)
    got = c.get("imghash", "rollout", '{"x":1}', 2)
    assert got is not None and np.array_equal(got.grid, e.grid) and got.target == 2
    assert (got.logit, got.prob, got.stats) == (1.5, 0.8, {"max": 11.0})
    # every part of the key matters
    assert c.get("imghash", "rollout", '{"x":1}', 1) is None
    assert c.get("imghash", "rollout", '{"x":2}', 2) is None
    assert c.get("other", "rollout", '{"x":1}', 2) is None
    assert GridCache(tmp_path, "abc124", {"size": [64, 48]}).get("imghash", "rollout", '{"x":1}', 2) is None
    assert GridCache(tmp_path, "abc123", {"size": [32, 48]}).get("imghash", "rollout", '{"x":1}', 2) is None
    c.put_prediction("imghash", CachedPrediction(np.array([1, 2], np.float32),
                                                 np.array([0.7, 0.9], np.float32)))
    p = c.get_prediction("imghash")
    assert p is not None and p.logits.tolist() == [1.0, 2.0]
    names = [f.name for f in tmp_path.rglob("*") if f.is_file()]
    assert all(n.endswith(".npz") and "rollout" not in n and "imghash" not in n for n in names)
    assert not [f for f in tmp_path.rglob(".tmp-*")]  # atomic writes leave no temp files


def test_damaged_entry_is_a_miss(tmp_path):
    c = GridCache(tmp_path, "v", {})
    c.put("h", "m", "{}", CachedGrid(np.ones((2, 2), np.float32), 0, 0.0, 0.5))
    (f,) = list(tmp_path.rglob("*.npz"))
    f.write_bytes(b"not a zip")
    assert c.get("h", "m", "{}", 0) is None and c.misses == 1


def test_file_hash(tmp_path):
    a = tmp_path / "a.png"
    a.write_bytes(b"x" * 10)
    b = tmp_path / "b.png"
    b.write_bytes(b"x" * 10)
    assert file_hash(a) == file_hash(b) and len(file_hash(a)) == 32
    b.write_bytes(b"y")
    assert file_hash(a) != file_hash(b)
