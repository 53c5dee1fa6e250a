//! Architecture invariants that a command can check (see ARCHITECTURE.md).

use std::path::Path;

use anyhow::Result;

pub(crate) fn run(_root: &Path) -> Result<()> {
    Ok(())
}
