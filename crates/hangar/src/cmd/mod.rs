//! One module per subcommand.

pub(crate) mod bench;
pub(crate) mod cache;
pub(crate) mod config;
pub(crate) mod demo;
pub(crate) mod jobs;
pub(crate) mod serve;
