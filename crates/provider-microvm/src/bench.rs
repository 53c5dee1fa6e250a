//! Measurements for `hangar bench microvm` and the pre-booted pool's
//! snapshot path.
//!
//! A [`Snapshot`] is a booted, idle VM frozen to a file with QEMU migration,
//! plus its disk frozen as a read-only qcow2 (the state refers to the disk
//! as it was). Restoring gives each clone its own overlay on that frozen
//! disk and `-incoming` the state; the agent inside is idle and answers a
//! `ping` with `ready`.

use std::path::PathBuf;

/// A saved idle VM.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// QEMU's migration stream.
    pub state: PathBuf,
    /// The VM's disk at the time of the snapshot (qcow2 over the base image).
    pub disk: PathBuf,
}
