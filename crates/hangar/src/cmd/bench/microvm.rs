//! `hangar bench microvm --runs N --json`: boot, restore, dispatch and
//! memory figures of the microVM provider on this host (see
//! `hangar_provider_microvm::bench` for what each field measures).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args as ClapArgs;
use hangar_provider_microvm::{MicrovmConfig, bench, image};

#[derive(Debug, ClapArgs)]
pub(crate) struct Args {
    #[arg(long, default_value_t = 10)]
    runs: usize,
    /// Print one JSON object (milliseconds, MiB).
    #[arg(long)]
    json: bool,
    /// The image to boot, by name (the newest of that name) or by key (as
    /// `hangar image ls` shows them): its runner must exit at once (the test
    /// image's does). Default: the newest `hangar-test` image in the cache.
    #[arg(long, default_value = "hangar-test")]
    image: String,
    #[arg(long, env = "HANGAR_CACHE_DIR")]
    cache: Option<PathBuf>,
    #[arg(long, default_value = "qemu-system-x86_64")]
    qemu: PathBuf,
    #[arg(long, default_value_t = 1)]
    vcpus: u32,
    #[arg(long, default_value_t = 512)]
    memory_mib: u32,
    /// Skip `webhook_to_runner_started_prebooted_ms` (it needs root: a
    /// network namespace, taps and nftables).
    #[arg(long)]
    no_webhook: bool,
    /// Boot the research's reference guest (this lean kernel, with
    /// `--reference-initrd`) next to every cold boot, to tell this host's
    /// speed at the moment: fields `reference_pid1_ms` and
    /// `cold_boot_minus_reference_ms`. `cargo xtask bench
    /// microvm-reference` builds both files and passes them.
    #[arg(long, requires = "reference_initrd")]
    reference_kernel: Option<PathBuf>,
    /// The reference guest's initramfs (a static `/init` that prints
    /// `GUEST-INIT-READY` on the serial console).
    #[arg(long, requires = "reference_kernel")]
    reference_initrd: Option<PathBuf>,
}

pub(crate) async fn run(args: Args) -> Result<()> {
    let cache = super::super::image::cache_dir(args.cache);
    let info = image::image_list(&cache)
        .into_iter()
        .find(|i| i.name == args.image || i.key == args.image)
        .with_context(|| {
            format!("no image {:?} in {} (hangar image build)", args.image, cache.display())
        })?;
    let state = std::env::temp_dir().join(format!("hangar-bench-{}", std::process::id()));
    let mut config = MicrovmConfig::new(info.kernel.clone(), info.rootfs.clone(), state.clone());
    config.initrd.clone_from(&info.initrd);
    config.qemu.clone_from(&args.qemu);
    config.vcpus = args.vcpus;
    config.memory_mib = args.memory_mib;
    let reference = match (args.reference_kernel, args.reference_initrd) {
        (Some(kernel), Some(initrd)) => {
            for (what, path) in [("--reference-kernel", &kernel), ("--reference-initrd", &initrd)] {
                anyhow::ensure!(path.is_file(), "{what} {}: no such file", path.display());
            }
            Some(bench::Reference { kernel, initrd })
        }
        _ => None,
    };
    let report = bench::bench_run(config, args.runs, reference.as_ref()).await;
    let _ = std::fs::remove_dir_all(&state);
    let mut report = serde_json::to_value(report?)?;
    // The whole path, hangar's server and scheduler included.
    let webhook = if args.no_webhook {
        None
    } else {
        let qemu = which(&args.qemu);
        let measured = super::webhook_vm::measure(
            &info.kernel,
            &info.rootfs,
            info.initrd.as_ref(),
            &qemu,
            args.runs,
        )
        .await;
        match measured {
            Ok(stat) => stat,
            Err(e) => {
                eprintln!("hangar bench microvm: webhook → runner started not measured: {e:#}");
                None
            }
        }
    };
    report["webhook_to_runner_started_prebooted_ms"] = serde_json::to_value(webhook)?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    Ok(())
}

/// `qemu-system-x86_64` → its absolute path (the pool config wants one).
fn which(program: &std::path::Path) -> PathBuf {
    if program.components().count() > 1 {
        return program.to_owned();
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(program))
        .find(|p| p.exists())
        .unwrap_or_else(|| program.to_owned())
}
