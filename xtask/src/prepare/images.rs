//! The microVM test kernel and image: built with the same code as
//! `hangar image build` (from Debian's kernel source and debootstrap), from
//! the lean test spec, cached under `cache_dir()` by their inputs.
//!
//! A fresh machine builds the kernel (minutes) and the debootstrap tree
//! (about a minute) once; afterwards only the image layer is redone when the
//! guest agent changes (seconds). Exports `HANGAR_TEST_MICROVM_KERNEL`,
//! `HANGAR_TEST_MICROVM_ROOTFS` and `HANGAR_TEST_QEMU` for the tests, and
//! `HANGAR_TEST_MICROVM_IMAGE_KEY` for `cargo xtask bench microvm`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};
use hangar_provider_microvm::image::{
    self, ImageSpec, RunnerSource, StderrProgress, TEST_SPEC, image_build,
};

use super::TestEnv;

pub(crate) fn prepare(root: &Path, env: &mut TestEnv) -> Result<()> {
    let Some(qemu) = which("qemu-system-x86_64") else {
        eprintln!("xtask: WARNING: qemu-system-x86_64 is missing: the microVM tests will skip");
        return Ok(());
    };
    if which("debootstrap").is_none() || !is_root() {
        eprintln!("xtask: WARNING: debootstrap missing or not root: the microVM tests will skip");
        return Ok(());
    }
    let agent = build_static_agent(root)?;
    // The stand-in runner (debug; its debug info is stripped into the image).
    crate::run(Command::new("cargo").args(["build", "-q", "-p", "hangar-standin-runner"]))
        .context("building the stand-in runner")?;
    let target = crate::target_dir(root);
    let mut spec =
        ImageSpec::parse(TEST_SPEC, Path::new("crates/provider-microvm/images/test.toml"))?;
    // End-to-end tests run simulator jobs inside VMs with it.
    spec.runner = RunnerSource::TestRunner {
        standin: Some(target.join("debug").join("hangar-standin-runner")),
    };
    let cache = super::cache_dir();
    eprintln!("xtask: building/finding the microVM test image under {}", cache.display());
    let info = image_build(&cache, &spec, &agent, &mut StderrProgress::default())
        .context("building the microVM test image")?;
    prune_old_images(&cache, &spec.name, &info.key);
    env.vars.push(("HANGAR_TEST_MICROVM_KERNEL".into(), info.kernel.display().to_string()));
    env.vars.push(("HANGAR_TEST_MICROVM_ROOTFS".into(), info.rootfs.display().to_string()));
    env.vars.push(("HANGAR_TEST_MICROVM_IMAGE_KEY".into(), info.key));
    env.vars.push(("HANGAR_TEST_QEMU".into(), qemu.display().to_string()));
    // The stock-kernel fallback of `hangar image build`, booted by its own
    // test: Debian's cloud kernel .deb (from the apt mirror), cached.
    match image::stock_kernel_fetch(&cache, &mut StderrProgress::default()) {
        Ok(stock) => {
            eprintln!("xtask: stock kernel {} at {}", stock.package, stock.kernel.display());
            env.vars.push((
                "HANGAR_TEST_MICROVM_STOCK_KERNEL".into(),
                stock.kernel.display().to_string(),
            ));
            env.vars.push((
                "HANGAR_TEST_MICROVM_STOCK_INITRD".into(),
                stock.initrd.display().to_string(),
            ));
        }
        Err(e) => eprintln!("xtask: WARNING: no stock kernel ({e}): its test will skip"),
    }
    Ok(())
}

/// Older builds of the test image (the agent changes often) are dropped,
/// once they are an hour old: several checkouts on one machine share the
/// cache, and another one's tests may be booting its build right now.
fn prune_old_images(cache: &Path, name: &str, keep: &str) {
    let Ok(entries) = std::fs::read_dir(cache.join("images")) else { return };
    let hour_old = |entry: &std::fs::DirEntry| {
        entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > std::time::Duration::from_secs(3600))
    };
    for entry in entries.flatten() {
        let file = entry.file_name().to_string_lossy().into_owned();
        if file.starts_with(&format!("{name}-")) && !file.ends_with(keep) && hour_old(&entry) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

fn which(program: &str) -> Option<PathBuf> {
    hangar_exec::find(program)
}

fn is_root() -> bool {
    super::packages::is_root()
}

/// `cargo xtask bench microvm`: prepares the test image, then runs
/// `hangar bench microvm` (all fields, the webhook path included) on it.
pub(crate) fn bench_microvm(root: &Path, runs: usize, json: bool) -> Result<()> {
    bench_microvm_with(root, runs, json, false)
}

/// `cargo xtask bench microvm-reference`: the same, with the research's
/// reference guest booted next to every cold boot (built first, cached).
pub(crate) fn bench_microvm_reference(root: &Path, runs: usize, json: bool) -> Result<()> {
    bench_microvm_with(root, runs, json, true)
}

fn bench_microvm_with(root: &Path, runs: usize, json: bool, reference: bool) -> Result<()> {
    let mut env = TestEnv::default();
    prepare(root, &mut env)?;
    let Some((_, key)) = env.vars.iter().find(|(k, _)| k == "HANGAR_TEST_MICROVM_IMAGE_KEY") else {
        anyhow::bail!("no microVM test image (see the warning above)");
    };
    // The measurement itself is `hangar bench microvm`, on the image just
    // prepared (by its key: the cache may hold newer `hangar-test` images
    // built from other trees), in a release build.
    let mut bench = Command::new(crate::release_hangar(root)?);
    bench.args(["bench", "microvm", "--runs", &runs.to_string(), "--image", key]);
    bench.arg("--cache").arg(super::cache_dir());
    if json {
        bench.arg("--json");
    }
    if reference {
        let (kernel, initrd) = super::reference::build(&super::cache_dir())?;
        bench.arg("--reference-kernel").arg(kernel).arg("--reference-initrd").arg(initrd);
    }
    crate::run(&mut bench)
}

/// The host's target triple, named explicitly so that `RUSTFLAGS` apply to
/// the agent only, not to build scripts and proc macros (and so the static
/// build has its own directory under `target/` and rebuilds nothing else).
const AGENT_TARGET: &str = "x86_64-unknown-linux-gnu";

/// Builds the guest agent as images ship it and returns its path:
/// release (under TCG its code is emulated, and the debug build is 10x the
/// size to page in through the overlay on every boot) and statically
/// linked against glibc, so it runs in any image whatever its glibc, and
/// starts without the dynamic loader (~50 ms less boot under TCG).
pub(crate) fn build_static_agent(root: &Path) -> Result<PathBuf> {
    crate::run(Command::new("cargo").env("RUSTFLAGS", "-C target-feature=+crt-static").args([
        "build",
        "-q",
        "--release",
        "-p",
        "hangar-guest-agent",
        "--target",
        AGENT_TARGET,
    ]))
    .context("building the guest agent")?;
    Ok(crate::target_dir(root).join(AGENT_TARGET).join("release").join("hangar-guest-agent"))
}
