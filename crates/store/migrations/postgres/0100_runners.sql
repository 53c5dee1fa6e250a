-- Runners (see hangar_types::RunnerState for the state machine). The id is
-- generated and inserted before any side effect; it is also the runner's
-- GitHub name and instance name. Every update is conditional on generation.
CREATE TABLE runners (
    runner_id        TEXT PRIMARY KEY NOT NULL,
    pool             TEXT NOT NULL,
    state            TEXT NOT NULL,
    generation       BIGINT NOT NULL,
    for_job          BIGINT,
    job_id           BIGINT,
    github_id        BIGINT,
    reason           TEXT,
    created_at_ms    BIGINT NOT NULL,
    jit_minted_at_ms BIGINT,
    launched_at_ms   BIGINT,
    ready_at_ms      BIGINT,
    busy_at_ms       BIGINT,
    gone_at_ms       BIGINT
);
CREATE INDEX runners_state ON runners (state);
CREATE INDEX runners_for_job ON runners (for_job) WHERE for_job IS NOT NULL;
CREATE INDEX runners_job ON runners (job_id) WHERE job_id IS NOT NULL;

-- What happened to each runner, in order, with the reason (stolen, reaped,
-- launch failed...): the history the API and CLI show.
CREATE TABLE runner_events (
    event_id   BIGSERIAL PRIMARY KEY,
    runner_id  TEXT NOT NULL,
    at_ms      BIGINT NOT NULL,
    kind       TEXT NOT NULL,
    message    TEXT NOT NULL
);
CREATE INDEX runner_events_runner ON runner_events (runner_id, event_id);

-- The scheduler's notes on a job: why it has no runner, and its failed
-- launches (bounded retries with backoff count these).
CREATE TABLE job_lifecycle (
    job_id             BIGINT PRIMARY KEY NOT NULL,
    reason             TEXT,
    launch_failures    BIGINT NOT NULL,
    last_failure_at_ms BIGINT,
    last_error         TEXT,
    updated_at_ms      BIGINT NOT NULL
);
