-- amimake local cache, schema 1.
-- Applied in one BEGIN IMMEDIATE transaction; PRAGMA user_version tracks it.

-- A layer hash built for a target maps to an image.
CREATE TABLE layers (
    hash          TEXT    NOT NULL,
    target        TEXT    NOT NULL,
    image         TEXT    NOT NULL,
    parent_hash   TEXT,
    template      TEXT    NOT NULL,
    created_at    INTEGER NOT NULL,  -- unix seconds
    last_used_at  INTEGER NOT NULL,  -- unix seconds
    build_seconds REAL,
    build_id      TEXT,
    PRIMARY KEY (hash, target)
) WITHOUT ROWID;
CREATE INDEX layers_by_template ON layers (template, target);

-- Every layer build attempt, for estimates and history.
CREATE TABLE builds (
    id          INTEGER PRIMARY KEY,
    build_id    TEXT    NOT NULL,
    template    TEXT    NOT NULL,
    hash        TEXT    NOT NULL,
    target      TEXT    NOT NULL,
    started_at  REAL    NOT NULL,  -- unix seconds
    finished_at REAL    NOT NULL,
    seconds     REAL    NOT NULL,
    result      TEXT    NOT NULL   -- built | failed | cancelled
);
CREATE INDEX builds_by_template ON builds (template, target, result, id);

-- The canonical hash inputs of every built layer (JSON), for `explain`.
CREATE TABLE layer_records (
    hash   TEXT NOT NULL PRIMARY KEY,
    record TEXT NOT NULL
) WITHOUT ROWID;

-- The hash each template was last built with, per target.
CREATE TABLE last_built (
    template TEXT    NOT NULL,
    target   TEXT    NOT NULL,
    hash     TEXT    NOT NULL,
    built_at INTEGER NOT NULL,
    PRIMARY KEY (template, target)
) WITHOUT ROWID;

-- Cloud resources recorded before they are created, for `gc --orphans`.
CREATE TABLE resources (
    id         TEXT    NOT NULL PRIMARY KEY,  -- e.g. i-0abc, ami-0abc, snap-0abc, or a pending token
    kind       TEXT    NOT NULL,              -- instance | image | snapshot | object
    region     TEXT,
    build_id   TEXT    NOT NULL,
    layer      TEXT    NOT NULL,
    hash       TEXT    NOT NULL,
    pid        INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    state      TEXT    NOT NULL               -- pending | live | done
);

-- Last live resolution of a source (an ami_filter), used offline.
CREATE TABLE source_resolutions (
    key         TEXT    NOT NULL PRIMARY KEY,
    image       TEXT    NOT NULL,
    resolved_at INTEGER NOT NULL
) WITHOUT ROWID;
