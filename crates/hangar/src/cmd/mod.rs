//! One module per subcommand.

pub(crate) mod config;
pub(crate) mod jobs;
pub(crate) mod serve;
