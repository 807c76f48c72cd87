"""Feature stores: per-clip ragged arrays in CSR form, written shard by shard, committed last.

Layout of one store directory::

    attrs.json              how to read the store back (extractor, version, params, dims, dtype, rate)
    shards/<sid>.zarr|.h5   one shard: `data[N_rows, *dims]` chunked along rows, `offsets[n+1]`
    commits/<sid>.json      the shard's commit record, written last: clips, row ranges, failures, and
                            what the shard must hold (array shapes, dtypes and digests; every file's
                            size, mtime and digest), sealed by a checksum of the record itself
    damaged/<sid>.json      a shard `pipeline verify` found damaged: the next run recomputes it
    failures.jsonl          a readable copy of every committed failure (clip id, reason)

A shard is trusted only once its commit record exists and checks out. The shard data is written under
a temporary name and renamed into place first, so a killed writer leaves at most an orphaned
temporary (cleaned up by the next run) and never a half-written shard that anyone reads.

Checks, cheapest first: `scan_store` (every open and every run) parses and validates each record and
stats each file it lists (present, same size; a file whose mtime moved is hashed and must match its
digest); the first read of a shard through a FeatureStore hashes its files; `verify_store` (the
`pipeline verify` command) hashes everything and decodes every array against its digest.

Modules: `files` (the error, atomic writes, digests), `backends` (zarr, HDF5), `records` (attrs.json and the
commit records, and their checks), `scan` (the cheap check), `writer` (StoreWriter), `verify` (the checks that
hash), `reader` (FeatureStore). Import from `pipeline.store`: the names below are its interface.
"""
from __future__ import annotations

from .backends import HDF5Backend, ZarrBackend, get_backend
from .files import StoreError, _atomic_write_text, array_digest, file_digest
from .reader import FeatureStore, clip_mean
from .records import ATTRS_FILE, FORMAT_VERSION, read_attrs
from .scan import StoreScan, repair_command, scan_store
from .verify import Verification, verify_store
from .writer import ClipResult, StoreWriter, write_failures_log

__all__ = ["ATTRS_FILE", "FORMAT_VERSION", "ClipResult", "FeatureStore", "HDF5Backend", "StoreError", "StoreScan",
           "StoreWriter", "Verification", "ZarrBackend", "array_digest", "clip_mean", "file_digest", "get_backend",
           "read_attrs", "repair_command", "scan_store", "verify_store", "write_failures_log",
           "_atomic_write_text"]  # (the training layer's run files are written the store's way)
