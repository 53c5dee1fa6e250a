-- Cache entries of the GitHub Actions cache server (crates/cache). The
-- identity (repository, scope, lower-cased key, version) is unique across
-- both states, so a second save is a conflict. `manifest` lists the blob's
-- parts in order ("key<TAB>size" lines); the bytes live in the blob store
-- under `blob_prefix`.
CREATE TABLE cache_entries (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    repository_id   INTEGER NOT NULL,
    scope           TEXT NOT NULL,
    cache_key       TEXT NOT NULL,
    key_norm        TEXT NOT NULL,
    version         TEXT NOT NULL,
    blob_prefix     TEXT NOT NULL,
    state           TEXT NOT NULL,
    size            INTEGER NOT NULL DEFAULT 0,
    manifest        TEXT NOT NULL DEFAULT '',
    created_at_ms   INTEGER NOT NULL,
    committed_at_ms INTEGER,
    last_used_at_ms INTEGER NOT NULL,
    hits            INTEGER NOT NULL DEFAULT 0,
    bytes_served    INTEGER NOT NULL DEFAULT 0,
    UNIQUE (repository_id, scope, key_norm, version)
);
CREATE INDEX cache_entries_lru ON cache_entries (repository_id, last_used_at_ms);

-- Restore lookups per repository, for the hit rate.
CREATE TABLE cache_repo_stats (
    repository_id INTEGER PRIMARY KEY NOT NULL,
    lookups       INTEGER NOT NULL,
    hits          INTEGER NOT NULL
);
