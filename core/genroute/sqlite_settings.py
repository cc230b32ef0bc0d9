"""SQLite settings for the databases written on every request (the ledger's and the result store's).

Passed to :class:`diskcache.Cache`, which applies ``sqlite_*`` settings as pragmas on every connection.
"""

from __future__ import annotations

HOT_WRITES: dict[str, int] = {
    # No memory map and a small page cache: these databases are small (blobs are files), and diskcache's
    # defaults (64 MiB mapped, 32 MiB cached per connection) made a long batch's memory grow with it.
    "sqlite_mmap_size": 0,
    "sqlite_cache_size": 2048,
    # diskcache's FULL auto-vacuum moves pages at every commit that frees some; the state row rewritten
    # by each reservation frees and takes pages all the time, and freed pages are reused anyway.
    # (Takes effect when a database is created.)
    "sqlite_auto_vacuum": 0,
    # Checkpoint the write-ahead log every 8,192 pages rather than 1,000: a checkpoint copies each changed
    # page once and syncs the disk, and the same few pages change on every request, so rarer checkpoints
    # cost less per request (a miss's mean and p99 fell by a third on this machine's disk). The log is cut
    # back to 8 MiB after each one.
    "sqlite_wal_autocheckpoint": 8192,
    "sqlite_journal_size_limit": 8 * 2**20,
}
