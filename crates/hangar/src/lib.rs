//! hangar's composition root: the typed configuration ([`config`]), the
//! providers it turns pools into ([`providers`]) and the [`app::App`] that
//! wires the whole system. The `hangar` binary (`main.rs`, `cmd/`) and the
//! integration tests of other crates build the system only through here.
//!
//! This crate is an edge: it may use `anyhow`, and it is the only crate
//! that reads the config file and installs the tracing subscriber.

pub mod app;
pub mod config;
pub mod metrics;
pub mod providers;

pub use app::{App, Parts, local_admin_listener};
