//! `hangar image build SPEC` and `hangar image ls`: guest kernels and root
//! filesystems for the microVM provider (see `hangar_provider_microvm::image`).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Subcommand;
use hangar_provider_microvm::image::{self, ImageSpec, StderrProgress};

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Build (or find in the cache) the kernel and root filesystem of an image spec.
    Build {
        /// The image spec (TOML), e.g. crates/provider-microvm/images/full.toml.
        spec: PathBuf,
        /// The guest agent binary to put in the image (default: the
        /// `hangar-guest-agent` installed next to `hangar`).
        #[arg(long)]
        agent: Option<PathBuf>,
        /// The image cache (default ~/.cache/hangar).
        #[arg(long, env = "HANGAR_CACHE_DIR")]
        cache: Option<PathBuf>,
    },
    /// List the images in the cache.
    Ls {
        #[arg(long, env = "HANGAR_CACHE_DIR")]
        cache: Option<PathBuf>,
    },
}

/// `$HANGAR_CACHE_DIR`, else `~/.cache/hangar`, unless given.
pub(crate) fn cache_dir(flag: Option<PathBuf>) -> PathBuf {
    hangar::providers::image_cache_dir(flag)
}

pub(crate) async fn run(command: Command) -> Result<()> {
    match command {
        Command::Build { spec, agent, cache } => {
            let text = std::fs::read_to_string(&spec)
                .with_context(|| format!("reading {}", spec.display()))?;
            let parsed = ImageSpec::parse(&text, &spec)?;
            let agent = agent.or_else(image::agent_beside_current_exe).context(
                "no hangar-guest-agent next to hangar; pass --agent PATH \
                 (`cargo xtask agent` builds it and prints its path)",
            )?;
            let cache = cache_dir(cache);
            let info = tokio::task::spawn_blocking(move || {
                image::image_build(&cache, &parsed, &agent, &mut StderrProgress::default())
            })
            .await??;
            println!("kernel = {:?}", info.kernel.display().to_string());
            println!("rootfs = {:?}", info.rootfs.display().to_string());
            Ok(())
        }
        Command::Ls { cache } => {
            print!("{}", image::image_list_text(&cache_dir(cache)));
            Ok(())
        }
    }
}
