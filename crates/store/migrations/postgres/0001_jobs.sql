-- Every accepted delivery (the event log), keyed by X-GitHub-Delivery so a
-- redelivery is recognised. `payload` is the raw JSON as GitHub sent it.
CREATE TABLE deliveries (
    delivery_id    TEXT PRIMARY KEY NOT NULL,
    event          TEXT NOT NULL,
    action         TEXT,
    job_id         BIGINT,
    received_at_ms BIGINT NOT NULL,
    payload        TEXT NOT NULL
);
CREATE INDEX deliveries_job ON deliveries (job_id, received_at_ms) WHERE job_id IS NOT NULL;

-- One row per workflow job. `record` (JSON of hangar_types::JobRecord) is the
-- source of truth; the other columns copy what queries filter and sort on.
CREATE TABLE jobs (
    job_id        BIGINT PRIMARY KEY NOT NULL,
    state         TEXT NOT NULL,
    repository    TEXT NOT NULL,
    generation    BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL,
    record        TEXT NOT NULL
);
CREATE INDEX jobs_state ON jobs (state, job_id);
CREATE INDEX jobs_repository ON jobs (repository, job_id);
