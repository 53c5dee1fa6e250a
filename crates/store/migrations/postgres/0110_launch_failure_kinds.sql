-- Failed launches that were not the job's own (GitHub 5xx, rate limits,
-- provider faults) are counted apart: they back off but never give a job
-- up. `last_failure_kind` says which kind the latest failure was.
ALTER TABLE job_lifecycle ADD COLUMN infra_failures BIGINT NOT NULL DEFAULT 0;
ALTER TABLE job_lifecycle ADD COLUMN last_failure_kind TEXT;
