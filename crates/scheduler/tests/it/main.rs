//! End-to-end tests of the lifecycle through the GitHub simulator over real
//! HTTP: hangar's real REST client, a real store (SQLite), real runner
//! processes (`hangar-standin-runner` under the process provider) or the
//! fake provider where a test needs to steer failures.
//!
//! One test binary (one link step); one module per concern.

mod burst;
mod outage;
mod scope;
mod steps;
mod world;
