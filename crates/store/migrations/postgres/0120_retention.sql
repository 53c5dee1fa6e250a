-- What the retention pass (store/src/retention.rs) selects by age.
-- Building these on a large database can outlast the connection's
-- statement_timeout; a migration runs in its own transaction, so this
-- lifts the limit for it alone.
SET LOCAL statement_timeout = 0;
CREATE INDEX deliveries_received ON deliveries (received_at_ms);
CREATE INDEX runner_events_at ON runner_events (at_ms);
CREATE INDEX jobs_state_updated ON jobs (state, updated_at_ms);
