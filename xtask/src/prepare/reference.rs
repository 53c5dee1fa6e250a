//! The shared research's reference guest for `cargo xtask bench
//! microvm-reference`: its lean kernel (`boot-reference/microvm.fragment`
//! on tinyconfig, Debian's kernel source) and an initramfs holding its
//! static C `/init` (`boot-reference/init.c`), which prints
//! `GUEST-INIT-READY` on the console. Built once per fresh machine (~5 min,
//! the kernel) and cached under `<cache>/reference/<key>/` by its inputs.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

const FRAGMENT: &str = include_str!("../../boot-reference/microvm.fragment");
const INIT_C: &str = include_str!("../../boot-reference/init.c");

/// The reference kernel and initramfs, built if the cache lacks them.
pub(crate) fn build(cache: &Path) -> Result<(PathBuf, PathBuf)> {
    let source = hangar_provider_microvm::image::kernel_source().context(
        "no Debian kernel source in /usr/src (apt-get install linux-source-6.1): \
         the reference kernel is built from it",
    )?;
    let size = std::fs::metadata(&source)?.len();
    let mut h = Sha256::new();
    for part in [source.as_os_str().as_encoded_bytes(), &size.to_le_bytes(), FRAGMENT.as_bytes()] {
        h.update(part);
        h.update([0]);
    }
    h.update(INIT_C.as_bytes());
    let dir = cache.join("reference").join(&hex::encode(h.finalize())[..16]);
    let (kernel, initrd) = (dir.join("vmlinux"), dir.join("initrd.cpio"));
    if kernel.exists() && initrd.exists() {
        return Ok((kernel, initrd));
    }

    // The build's chatter goes to stderr: stdout is the benchmark's JSON.
    let quiet = |cmd: &mut Command| -> Result<()> { crate::run(cmd.stdout(std::io::stderr())) };
    let work = dir.with_extension("partial");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    eprintln!("xtask: building the reference guest kernel (once; minutes) in {}", work.display());
    quiet(Command::new("tar").arg("xf").arg(&source).arg("-C").arg(&work))?;
    let src = std::fs::read_dir(&work)?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.is_dir())
        .context("no directory in the kernel source tarball")?;
    std::fs::write(work.join("microvm.fragment"), FRAGMENT)?;
    quiet(Command::new("make").arg("-C").arg(&src).arg("-s").arg("tinyconfig"))?;
    quiet(
        Command::new("scripts/kconfig/merge_config.sh")
            .current_dir(&src)
            .args(["-m", ".config"])
            .arg(work.join("microvm.fragment")),
    )?;
    quiet(Command::new("make").arg("-C").arg(&src).arg("-s").arg("olddefconfig"))?;
    let jobs = std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get);
    quiet(
        Command::new("make").arg("-C").arg(&src).arg("-s").arg(format!("-j{jobs}")).arg("vmlinux"),
    )?;

    let init_c = work.join("init.c");
    std::fs::write(&init_c, INIT_C)?;
    let init = work.join("init");
    quiet(Command::new("gcc").args(["-static", "-Os", "-s", "-o"]).arg(&init).arg(&init_c))?;
    let cpio = newc(&[
        Entry::Dir("dev"),
        Entry::CharDev("dev/console", 5, 1),
        Entry::Dir("proc"),
        Entry::File("init", std::fs::read(&init)?),
    ]);

    let out = work.join("out");
    std::fs::create_dir_all(&out)?;
    std::fs::copy(src.join("vmlinux"), out.join("vmlinux"))?;
    std::fs::write(out.join("initrd.cpio"), cpio)?;
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.parent().context("cache dir")?)?;
    std::fs::rename(&out, &dir)?;
    let _ = std::fs::remove_dir_all(&work);
    Ok((kernel, initrd))
}

enum Entry<'a> {
    Dir(&'a str),
    /// Path, major, minor.
    CharDev(&'a str, u32, u32),
    File(&'a str, Vec<u8>),
}

/// An initramfs in the kernel's "newc" cpio format (what `cpio -H newc`
/// writes), made here so that the device node needs no root.
fn newc(entries: &[Entry<'_>]) -> Vec<u8> {
    fn record(out: &mut Vec<u8>, ino: u32, name: &str, mode: u32, rdev: (u32, u32), data: &[u8]) {
        let fields = [
            ino,
            mode,
            0, // uid
            0, // gid
            if mode & 0o170000 == 0o040000 { 2 } else { 1 },
            0, // mtime
            u32::try_from(data.len()).expect("initramfs file under 4 GiB"),
            0, // devmajor
            0, // devminor
            rdev.0,
            rdev.1,
            u32::try_from(name.len() + 1).expect("short name"),
            0, // check
        ];
        out.extend_from_slice(b"070701");
        for f in fields {
            out.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        out.resize(out.len().next_multiple_of(4), 0);
        out.extend_from_slice(data);
        out.resize(out.len().next_multiple_of(4), 0);
    }
    let mut out = Vec::new();
    for (ino, entry) in (1..).zip(entries) {
        match entry {
            Entry::Dir(name) => record(&mut out, ino, name, 0o040755, (0, 0), &[]),
            Entry::CharDev(name, major, minor) => {
                record(&mut out, ino, name, 0o020600, (*major, *minor), &[]);
            }
            Entry::File(name, data) => record(&mut out, ino, name, 0o100755, (0, 0), data),
        }
    }
    record(&mut out, 0, "TRAILER!!!", 0, (0, 0), &[]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newc_is_what_cpio_reads() {
        let archive = newc(&[
            Entry::Dir("dev"),
            Entry::CharDev("dev/console", 5, 1),
            Entry::File("init", b"#!/bin/sh\n".to_vec()),
        ]);
        // Header (110 bytes) + "dev\0" padded: the next record starts 4-aligned.
        assert_eq!(&archive[..6], b"070701");
        assert_eq!(archive.len() % 4, 0);
        let Ok(out) = Command::new("cpio")
            .args(["-t", "-v", "--quiet"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut child| {
                use std::io::Write as _;
                child.stdin.take().expect("stdin").write_all(&archive)?;
                child.wait_with_output()
            })
        else {
            eprintln!("SKIPPED newc_is_what_cpio_reads: no cpio on this machine");
            return;
        };
        let listing = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{listing}");
        let lines: Vec<&str> = listing.lines().collect();
        assert_eq!(lines.len(), 3, "{listing}");
        assert!(lines[0].starts_with("drwxr-xr-x") && lines[0].ends_with(" dev"), "{listing}");
        assert!(lines[1].starts_with("crw-------") && lines[1].contains("5,"), "{listing}");
        assert!(lines[2].starts_with("-rwxr-xr-x") && lines[2].ends_with(" init"), "{listing}");
    }
}
