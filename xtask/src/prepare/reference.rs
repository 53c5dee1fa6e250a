//! The shared research's reference guest for `cargo xtask bench
//! microvm-reference`: its lean kernel (`boot-reference/microvm.fragment`
//! on tinyconfig, Debian's kernel source) and an initramfs (made by the
//! kernel tree's `gen_init_cpio`) holding its static C `/init`
//! (`boot-reference/init.c`), which prints
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
    // The kernel's own initramfs writer, built with the kernel
    // (`BLK_DEV_INITRD`): it makes the device node without root.
    let list = work.join("initramfs.list");
    std::fs::write(
        &list,
        format!(
            "dir /dev 755 0 0\nnod /dev/console 600 0 0 c 5 1\ndir /proc 755 0 0\n\
             file /init {} 755 0 0\n",
            init.display()
        ),
    )?;
    let cpio = work.join("initrd.cpio");
    crate::run(
        Command::new(src.join("usr/gen_init_cpio"))
            .arg(&list)
            .stdout(std::fs::File::create(&cpio)?),
    )?;

    let out = work.join("out");
    std::fs::create_dir_all(&out)?;
    std::fs::copy(src.join("vmlinux"), out.join("vmlinux"))?;
    std::fs::rename(&cpio, out.join("initrd.cpio"))?;
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.parent().context("cache dir")?)?;
    std::fs::rename(&out, &dir)?;
    let _ = std::fs::remove_dir_all(&work);
    Ok((kernel, initrd))
}
