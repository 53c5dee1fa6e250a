-- What the retention pass (store/src/retention.rs) selects by age.
CREATE INDEX deliveries_received ON deliveries (received_at_ms);
CREATE INDEX runner_events_at ON runner_events (at_ms);
CREATE INDEX jobs_state_updated ON jobs (state, updated_at_ms);
