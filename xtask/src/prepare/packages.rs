//! Debian packages the tests need, installed with apt when missing and we
//! are root. Not root and missing: the tests that need them skip loudly.

use std::process::Command;

use anyhow::Result;

/// (a program or file that proves the package is there, the package that
/// provides it): every program the code base runs ([`hangar_exec::PACKAGES`],
/// which also names them in "not found" errors), plus pins.
pub(crate) fn needed() -> Vec<(&'static str, &'static str)> {
    let mut needed = hangar_exec::PACKAGES.to_vec();
    // The base image may carry a backports qemu-utils that conflicts with
    // bookworm's qemu-system-x86; take both from bookworm.
    needed.push(("qemu-system-x86_64", "qemu-utils/bookworm"));
    needed
}

pub(crate) fn ensure(needed: &[(&str, &str)]) -> Result<()> {
    let mut missing: Vec<&str> = Vec::new();
    for (_, package) in needed.iter().filter(|(probe, _)| !probe_exists(probe)) {
        if !missing.contains(package) {
            missing.push(package);
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() {
        eprintln!(
            "xtask: WARNING: missing packages {missing:?} and not root: the tests that need them will skip"
        );
        return Ok(());
    }
    crate::run(Command::new("apt-get").arg("update").arg("-q"))?;
    crate::run(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-q", "--no-install-recommends", "--allow-downgrades"])
            .args(&missing),
    )
}

pub(crate) fn probe_exists(probe: &str) -> bool {
    hangar_exec::find(probe).is_some()
}

pub(crate) fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}
