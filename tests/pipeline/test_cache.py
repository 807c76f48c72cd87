import os

from pipeline import cache
from pipeline.cache import DigestMemo, hash_key


def test_hash_key_is_canonical():
    assert hash_key({"a": 1, "b": [1, 2]}) == hash_key({"b": (1, 2), "a": 1})
    assert hash_key({"a": 1}) != hash_key({"a": 2})


def test_digest_memoized_by_size_and_mtime(tmp_path, monkeypatch):
    f = tmp_path / "x.bin"
    f.write_bytes(b"hello")
    calls = []
    real = cache._hash_file
    monkeypatch.setattr(cache, "_hash_file", lambda p: calls.append(p) or real(p))
    memo = DigestMemo(tmp_path / "d.sqlite")
    d1 = memo.digest(f)
    assert memo.digest(f) == d1 and len(calls) == 1
    assert DigestMemo(tmp_path / "d.sqlite").digest(f) == d1 and len(calls) == 1  # persisted
    f.write_bytes(b"world")
    os.utime(f, ns=(1, 10**18))
    assert memo.digest(f) != d1 and len(calls) == 2
    assert memo.digest(tmp_path / "missing.mp4").startswith("missing:")
