//! Debian packages the tests need, installed with apt when missing and we
//! are root. Not root and missing: the tests that need them skip loudly.

use std::process::Command;

use anyhow::Result;

/// (a command that proves the package is there, the package that provides it)
pub(crate) const NEEDED: [(&str, &str); 18] = [
    // The real @actions/cache client and the tools it runs.
    ("node", "nodejs"),
    ("npm", "npm"),
    ("zstd", "zstd"),
    // The S3-compatible test server (moto) is installed into a virtualenv.
    ("python3", "python3"),
    ("/usr/share/doc/python3-venv", "python3-venv"),
    ("/usr/lib/postgresql", "postgresql"),
    // microVM provider (issue 4): QEMU, the image builder's tools, and
    // Debian's kernel source with what building it needs.
    ("qemu-system-x86_64", "qemu-system-x86"),
    // The base image may carry a backports qemu-utils that conflicts with
    // bookworm's qemu-system-x86; take both from bookworm.
    ("qemu-system-x86_64", "qemu-utils/bookworm"),
    ("debootstrap", "debootstrap"),
    ("mkfs.ext4", "e2fsprogs"),
    // objcopy strips the stand-in runner put into the test image.
    ("objcopy", "binutils"),
    ("nft", "nftables"),
    ("/usr/src/linux-source-6.1.tar.xz", "linux-source-6.1"),
    ("flex", "flex"),
    ("bison", "bison"),
    ("bc", "bc"),
    ("patch", "patch"),
    ("/usr/include/libelf.h", "libelf-dev"),
];

pub(crate) fn ensure(needed: &[(&str, &str)]) -> Result<()> {
    let missing: Vec<&str> = needed
        .iter()
        .filter(|(probe, _)| !probe_exists(probe))
        .map(|(_, package)| *package)
        .collect();
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
    if probe.starts_with('/') {
        return std::path::Path::new(probe).exists();
    }
    Command::new("sh")
        .args(["-c", &format!("command -v {probe}")])
        .output()
        .is_ok_and(|out| out.status.success())
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|out| out.stdout.starts_with(b"0\n"))
}
