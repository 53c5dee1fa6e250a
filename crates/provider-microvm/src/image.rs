//! `hangar image build` / `hangar image ls`: the guest kernel and root
//! filesystem, built from Debian's packages and cached by their inputs.
//!
//! - **Kernel**: Debian's `linux-source-*` tarball, the project's patches
//!   (`kernel/patches/`, see [`KERNEL_PATCHES`]), `make tinyconfig`, then
//!   the project's fragments (`kernel/base.config`, plus e.g.
//!   `kernel/docker.config` when the image spec names it), `make vmlinux`.
//!   The ELF `vmlinux` has a PVH note, so QEMU boots it without a
//!   decompressor. Cached under `kernels/<hash of fragments, patches and
//!   source>`.
//! - **Root filesystem tree**: `debootstrap --variant=minbase` plus the
//!   spec's packages, and the unprivileged `runner` user. Cached under
//!   `trees/<hash of suite, mirror, packages>` because it is the slow part
//!   and does not change when the agent does.
//! - **Image**: the tree + the guest agent + its config + the runner,
//!   packed with `mkfs.ext4 -d` (no journal) into a raw `rootfs.raw`
//!   (read-only from then on: VMs get qcow2 overlays over it). Cached under
//!   `images/<name>-<hash of everything>`.
//!
//! - **Stock kernel fallback**: when Debian's kernel source is missing or
//!   the build fails, Debian's stock cloud kernel (`linux-image-cloud-amd64`,
//!   fetched with `apt-get download`, unpacked with `dpkg-deb -x`, never
//!   installed) with a small initramfs: a static busybox (from
//!   `busybox-static`, fetched the same way) loads the kernel's virtio
//!   modules, mounts the root disk and hands PID 1 to the guest agent. Its
//!   virtio-mmio driver has no command-line discovery, so such VMs boot with
//!   ACPI. The initramfs is written in process ([`crate::initramfs`]: no
//!   `cpio` or `gzip` program). About 2 s slower to boot under TCG (shared
//!   research §5). Cached under `kernels/stock-<package>`.
//!
//! Each step is atomic (built in a temporary directory, renamed into
//! place), so an interrupted build never leaves a half image in the cache.
//! Everything here is blocking and shells out to the Debian tools; it needs
//! root (debootstrap, chroot).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use hangar_exec::{require, run};
use hangar_guest_agent::AgentConfig;
use hangar_types::ErrorChain;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// The kernel config fragments shipped with hangar, by name.
pub const KERNEL_FRAGMENTS: [(&str, &str); 2] = [
    ("base", include_str!("../kernel/base.config")),
    ("docker", include_str!("../kernel/docker.config")),
];

/// Patches applied (`patch -p1`) to Debian's kernel source before building,
/// in order: small changes that only matter to hangar's guests, each
/// explaining itself in its header. Part of the kernel's cache key.
pub const KERNEL_PATCHES: [(&str, &str); 1] = [(
    "0001-x86-mm-no-initmem-poison.patch",
    include_str!("../kernel/patches/0001-x86-mm-no-initmem-poison.patch"),
)];

/// The programs (and files) building the kernel from Debian's source needs,
/// checked before it starts (a missing one is a fallback to the stock
/// kernel, said with the package to install). `cargo xtask test` installs
/// their packages ([`hangar_exec::PACKAGES`]).
pub const KERNEL_PROGRAMS: &[&str] = &[
    "tar",
    "xz",
    "patch",
    "make",
    "gcc",
    "/usr/include/stdio.h",
    "flex",
    "bison",
    "bc",
    "/usr/include/libelf.h",
];

/// The programs building the root filesystem and packing the image needs,
/// checked before `hangar image build` starts (`objcopy` only for test
/// images with the stand-in runner, `curl` only for the runner release).
pub const ROOTFS_PROGRAMS: &[&str] = &["debootstrap", "chroot", "cp", "truncate", "mkfs.ext4"];

/// What fetching Debian's stock kernel runs.
pub const STOCK_PROGRAMS: &[&str] = &["apt-cache", "apt-get", "dpkg-deb"];

/// The unprivileged account the runner runs as in every image.
const RUNNER_USER: &str = "runner";

/// The image spec used by the test suite: minbase + the test runner.
pub const TEST_SPEC: &str = include_str!("../images/test.toml");
/// The test runner script (`run.sh --jitconfig` look-alike).
pub const TEST_RUNNER: &str = include_str!("../images/hangar-test-runner.sh");

/// An image spec file (TOML).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageSpec {
    pub name: String,
    #[serde(default = "default_suite")]
    pub suite: String,
    #[serde(default = "default_mirror")]
    pub mirror: String,
    /// Debian packages on top of minbase (the seeds' lesson: users expect
    /// what GitHub's image has).
    #[serde(default)]
    pub packages: Vec<String>,
    /// Size of the root filesystem image.
    #[serde(default = "default_size_mib")]
    pub size_mib: u64,
    /// Kernel fragments beyond `base` (see [`KERNEL_FRAGMENTS`]).
    #[serde(default)]
    pub kernel_fragments: Vec<String>,
    pub runner: RunnerSource,
    /// dockerd for the agent to start, when the image has Docker.
    #[serde(default)]
    pub dockerd: Option<String>,
}

/// Where the runner in the image comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind", deny_unknown_fields)]
pub enum RunnerSource {
    /// GitHub's actions/runner release tarball, downloaded at build time,
    /// installed in `/home/runner/actions-runner`, started as
    /// `run.sh --jitconfig`.
    Release { version: String },
    /// A local file or directory copied to `dest` in the image; `command`
    /// is the runner argv (`{jit_config}` is replaced by the JIT config).
    Local { path: PathBuf, dest: String, command: Vec<String> },
    /// The test suite's runner script ([`TEST_RUNNER`]), and beside it the
    /// GitHub simulator's stand-in runner (`hangar-standin-runner`) when
    /// `standin` names its binary: the script hands simulator JIT configs
    /// (base64 JSON) to it, so end-to-end tests run real jobs in VMs.
    TestRunner {
        #[serde(default)]
        standin: Option<PathBuf>,
    },
}

/// Where the stand-in runner goes in test images.
pub const STANDIN_PATH: &str = "/usr/local/bin/hangar-standin-runner";

fn kernel_kind_built() -> String {
    "built".into()
}

fn default_suite() -> String {
    "bookworm".into()
}
fn default_mirror() -> String {
    "http://deb.debian.org/debian".into()
}
fn default_size_mib() -> u64 {
    2048
}

/// A built image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageInfo {
    pub name: String,
    pub key: String,
    pub kernel: PathBuf,
    /// The stock kernel's initramfs (none for the project's own kernel).
    #[serde(default)]
    pub initrd: Option<PathBuf>,
    /// `built` (the project's small kernel) or `stock` (the fallback).
    #[serde(default = "kernel_kind_built")]
    pub kernel_kind: String,
    pub rootfs: PathBuf,
    pub size_bytes: u64,
    pub built_at: String,
    pub build_seconds: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("bad image spec {path}")]
    Spec {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error("unknown kernel fragment {0:?} (known: base, docker)")]
    Fragment(String),
    #[error("no Debian kernel source in /usr/src (apt-get install linux-source-6.1)")]
    NoKernelSource,
    #[error("{what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` failed ({status}); last output:\n{tail}")]
    Command { command: String, status: String, tail: String },
    /// A program that is missing (named with its Debian package) or failed.
    #[error(transparent)]
    Exec(#[from] hangar_exec::ExecError),
    #[error("the runner user in the tree {tree}: {message}")]
    RunnerUser { tree: PathBuf, message: String },
    #[error("no microVM image in {0} (build one with `hangar image build SPEC`)")]
    NoImage(PathBuf),
    /// An image hangar will not boot by default (see [`image_trusted`]).
    #[error("untrusted image {path}: {why}")]
    Untrusted { path: PathBuf, why: String },
}

/// Progress of a build, step by step.
pub trait Progress {
    fn step(&mut self, index: usize, total: usize, message: &str);
    fn done(&mut self, message: &str);
}

/// A text progress bar on stderr.
#[derive(Debug)]
pub struct StderrProgress {
    started: Instant,
}

impl Default for StderrProgress {
    fn default() -> Self {
        StderrProgress { started: Instant::now() }
    }
}

impl Progress for StderrProgress {
    fn step(&mut self, index: usize, total: usize, message: &str) {
        let width = 20;
        let filled = width * index / total.max(1);
        eprintln!(
            "[{}{}] {index}/{total} {message} ({:.0} s)",
            "#".repeat(filled),
            "-".repeat(width - filled),
            self.started.elapsed().as_secs_f64()
        );
    }

    fn done(&mut self, message: &str) {
        eprintln!("[{}] {message} ({:.0} s)", "#".repeat(20), self.started.elapsed().as_secs_f64());
    }
}

impl ImageSpec {
    pub fn parse(text: &str, path: &Path) -> Result<ImageSpec, ImageError> {
        toml::from_str(text).map_err(|source| ImageError::Spec { path: path.to_owned(), source })
    }

    fn fragments(&self) -> Result<Vec<(&'static str, &'static str)>, ImageError> {
        let mut out = vec![KERNEL_FRAGMENTS[0]];
        for name in &self.kernel_fragments {
            let f = KERNEL_FRAGMENTS
                .iter()
                .find(|(n, _)| n == name)
                .ok_or_else(|| ImageError::Fragment(name.clone()))?;
            if !out.contains(f) {
                out.push(*f);
            }
        }
        Ok(out)
    }
}

/// How `rootfs.raw` is packed (part of the image's cache key). No journal:
/// every VM writes to a throw-away overlay that no crash needs to recover,
/// and without one each write reaches the overlay once instead of twice.
const MKFS_ARGS: &[&str] = &["-q", "-F", "-L", "hangar-root", "-O", "^has_journal"];

/// Builds (or finds in the cache) the image of `spec`, with `agent` as the
/// guest agent binary.
pub fn image_build(
    cache: &Path,
    spec: &ImageSpec,
    agent: &Path,
    progress: &mut dyn Progress,
) -> Result<ImageInfo, ImageError> {
    let started = Instant::now();
    // Up front, not after minutes of kernel build.
    require(ROOTFS_PROGRAMS)?;
    match &spec.runner {
        RunnerSource::TestRunner { standin: Some(_) } => require(&["objcopy"])?,
        RunnerSource::Release { .. } => require(&["curl", "tar"])?,
        _ => {}
    }
    let total = 4;
    progress.step(0, total, "kernel");
    let (kernel, initrd) =
        kernel_or_stock(cache, kernel_source().as_deref(), &spec.fragments()?, progress)?;
    progress.step(1, total, "root filesystem tree (debootstrap)");
    let tree = tree_build(cache, spec)?;

    let agent_bytes = std::fs::read(agent).map_err(io("reading the agent", agent))?;
    let config = agent_config(spec, &tree)?;
    let mut h = Sha256::new();
    h.update(tree.as_os_str().as_encoded_bytes());
    h.update(kernel.as_os_str().as_encoded_bytes());
    h.update(Sha256::digest(&agent_bytes));
    h.update(serde_json::to_vec(&config).expect("config serializes"));
    h.update(toml::to_string(spec).expect("spec serializes"));
    h.update(MKFS_ARGS.join(" "));
    match &spec.runner {
        RunnerSource::Local { path, .. } | RunnerSource::TestRunner { standin: Some(path) } => {
            hash_path(&mut h, path)?;
        }
        _ => {}
    }
    let key = hex::encode(h.finalize())[..16].to_owned();
    let dir = cache.join("images").join(format!("{}-{key}", spec.name));
    let info_path = dir.join("image.json");
    if let Ok(text) = std::fs::read_to_string(&info_path)
        && let Ok(info) = serde_json::from_str::<ImageInfo>(&text)
    {
        progress.done(&format!("image {} is cached at {}", spec.name, dir.display()));
        return Ok(info);
    }

    progress.step(2, total, "installing the agent and the runner");
    let work = temp_sibling(&dir)?;
    let root = work.join("root");
    run(Command::new("cp").arg("-a").arg(&tree).arg(&root))?;
    let agent_dest = root.join(hangar_guest_agent::AGENT_PATH.trim_start_matches('/'));
    write_file(&agent_dest, &agent_bytes, 0o755)?;
    let config_dest = root.join(hangar_guest_agent::CONFIG_PATH.trim_start_matches('/'));
    write_file(
        &config_dest,
        &serde_json::to_vec_pretty(&config).expect("config serializes"),
        0o644,
    )?;
    runner_install(&root, &spec.runner)?;

    progress.step(3, total, "packing rootfs.raw (mkfs.ext4)");
    let rootfs = work.join("rootfs.raw");
    run(Command::new("truncate").arg("-s").arg(format!("{}M", spec.size_mib)).arg(&rootfs))?;
    run(Command::new("mkfs.ext4").args(MKFS_ARGS).arg("-d").arg(&root).arg(&rootfs))?;
    std::fs::remove_dir_all(&root).map_err(io("removing", &root))?;
    set_mode(&rootfs, 0o444)?;
    let kernel_name = if initrd.is_some() { "vmlinuz" } else { "vmlinux" };
    let mut pairs = vec![(kernel.clone(), kernel_name)];
    if let Some(initrd) = &initrd {
        pairs.push((initrd.clone(), "initrd.cpio.gz"));
    }
    for (from, name) in pairs {
        let to = work.join(name);
        if std::fs::hard_link(&from, &to).is_err() {
            std::fs::copy(&from, &to).map_err(io("copying the kernel to", &to))?;
        }
    }
    let info = ImageInfo {
        name: spec.name.clone(),
        key,
        kernel: dir.join(kernel_name),
        initrd: initrd.as_ref().map(|_| dir.join("initrd.cpio.gz")),
        kernel_kind: if initrd.is_some() { "stock".into() } else { kernel_kind_built() },
        rootfs: dir.join("rootfs.raw"),
        size_bytes: spec.size_mib * 1024 * 1024,
        built_at: chrono::Utc::now().to_rfc3339(),
        build_seconds: started.elapsed().as_secs_f64(),
    };
    let info_tmp = work.join("image.json");
    write_file(&info_tmp, &serde_json::to_vec_pretty(&info).expect("info serializes"), 0o644)?;
    rename_into_place(&work, &dir)?;
    progress.done(&format!("image {} built at {}", spec.name, dir.display()));
    Ok(info)
}

/// The images in the cache, newest first.
pub fn image_list(cache: &Path) -> Vec<ImageInfo> {
    image_list_dirs(cache).into_iter().map(|(_, info)| info).collect()
}

/// Whether a service may boot the image in `dir` (holding `info`'s
/// `image.json`) without the operator naming its files: whoever can write
/// an image's files, or any directory above them, picks the PID 1 that
/// receives every JIT config. So every path from `/` down to the image's
/// files must be owned by root or by this process's user and writable by
/// no one else (no group/world write bit; a sticky `/tmp` is not enough),
/// and `image.json` must point only at files inside its own directory.
pub fn image_trusted(dir: &Path, info: &ImageInfo) -> Result<(), ImageError> {
    let untrusted = |path: &Path, why: String| ImageError::Untrusted { path: path.to_owned(), why };
    let dir = dir.canonicalize().map_err(io("resolving", dir))?;
    let mut files = vec![dir.join("image.json"), info.kernel.clone(), info.rootfs.clone()];
    files.extend(info.initrd.clone());
    for file in &files {
        let real = file.canonicalize().map_err(io("resolving", file))?;
        if real.parent() != Some(dir.as_path()) {
            return Err(untrusted(
                file,
                format!("image.json names a file outside {}", dir.display()),
            ));
        }
        owned_and_private(&real).map_err(|why| untrusted(&real, why))?;
    }
    for ancestor in dir.ancestors() {
        owned_and_private(ancestor).map_err(|why| untrusted(ancestor, why))?;
    }
    Ok(())
}

/// Owned by root or the current user, and not group- or world-writable.
fn owned_and_private(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt as _;
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot stat it: {e}"))?;
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != 0 && meta.uid() != me {
        return Err(format!("owned by uid {}, not root or hangar's uid {me}", meta.uid()));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(format!("writable by group or others (mode {:o})", meta.mode() & 0o7777));
    }
    Ok(())
}

/// The newest image in `cache` that passes [`image_trusted`]. Refused
/// images are said in the error when none is left.
pub fn image_newest_trusted(cache: &Path) -> Result<ImageInfo, ImageError> {
    let mut refused = Vec::new();
    for (dir, info) in image_list_dirs(cache) {
        match image_trusted(&dir, &info) {
            Ok(()) => return Ok(info),
            Err(e) => {
                tracing::warn!(image = %dir.display(), error = %ErrorChain(&e), "not booting an untrusted image");
                refused.push(ErrorChain(&e).to_string());
            }
        }
    }
    if refused.is_empty() {
        return Err(ImageError::NoImage(cache.to_owned()));
    }
    Err(ImageError::Untrusted {
        path: cache.to_owned(),
        why: format!("no image there that hangar may boot: {}", refused.join("; ")),
    })
}

/// The images in the cache with their directories, newest first.
fn image_list_dirs(cache: &Path) -> Vec<(PathBuf, ImageInfo)> {
    let mut images: Vec<(PathBuf, ImageInfo)> = std::fs::read_dir(cache.join("images"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let text = std::fs::read_to_string(e.path().join("image.json")).ok()?;
            Some((e.path(), serde_json::from_str(&text).ok()?))
        })
        .collect();
    images.sort_by(|a, b| b.1.built_at.cmp(&a.1.built_at));
    images
}

/// `hangar image ls` as text: one line per cached image.
pub fn image_list_text(cache: &Path) -> String {
    let images = image_list(cache);
    if images.is_empty() {
        return format!(
            "no images in {} (build one with `hangar image build SPEC`)\n",
            cache.display()
        );
    }
    let mut out = format!(
        "{:<20} {:<17} {:>9} {:<26} {:<7} {}\n",
        "NAME", "KEY", "SIZE", "BUILT", "KERNEL", "ROOTFS"
    );
    for i in images {
        out.push_str(&format!(
            "{:<20} {:<17} {:>7}Mi {:<26} {:<7} {}\n",
            i.name,
            i.key,
            i.size_bytes / (1024 * 1024),
            i.built_at.get(..19).unwrap_or(&i.built_at),
            i.kernel_kind,
            i.rootfs.display()
        ));
    }
    out
}

/// The guest agent binary `hangar image build` puts in images: the
/// `hangar-guest-agent` installed next to the running executable.
pub fn agent_beside_current_exe() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let agent = exe.parent()?.join("hangar-guest-agent");
    agent.exists().then_some(agent)
}

/// Builds (or finds) the kernel for `fragments`; returns the `vmlinux` path.
pub fn kernel_build(
    cache: &Path,
    fragments: &[(&str, &str)],
    progress: &mut dyn Progress,
) -> Result<PathBuf, ImageError> {
    kernel_build_from(cache, kernel_source().as_deref(), fragments, progress)
}

/// The image's kernel: built from `source` (Debian's `linux-source-*`
/// tarball), or, when there is none or the build fails, Debian's stock
/// kernel and its initramfs (said on `progress`).
pub fn kernel_or_stock(
    cache: &Path,
    source: Option<&Path>,
    fragments: &[(&str, &str)],
    progress: &mut dyn Progress,
) -> Result<(PathBuf, Option<PathBuf>), ImageError> {
    match kernel_build_from(cache, source, fragments, progress) {
        Ok(kernel) => Ok((kernel, None)),
        Err(e) => {
            progress.step(
                0,
                4,
                &format!(
                    "kernel: building from Debian's source failed ({}); FALLING BACK to Debian's \
                     stock cloud kernel (slower to boot)",
                    e.to_string().lines().next().unwrap_or_default()
                ),
            );
            let stock = stock_kernel_fetch(cache, progress)?;
            Ok((stock.kernel, Some(stock.initrd)))
        }
    }
}

fn kernel_build_from(
    cache: &Path,
    source: Option<&Path>,
    fragments: &[(&str, &str)],
    progress: &mut dyn Progress,
) -> Result<PathBuf, ImageError> {
    let source = source.ok_or(ImageError::NoKernelSource)?.to_owned();
    let meta = std::fs::metadata(&source).map_err(io("reading", &source))?;
    let mut h = Sha256::new();
    h.update(source.as_os_str().as_encoded_bytes());
    h.update(meta.len().to_le_bytes());
    for (name, text) in fragments.iter().chain(&KERNEL_PATCHES) {
        h.update(name.as_bytes());
        h.update(text.as_bytes());
    }
    let key = hex::encode(h.finalize())[..16].to_owned();
    let dir = cache.join("kernels").join(&key);
    let vmlinux = dir.join("vmlinux");
    if vmlinux.exists() {
        return Ok(vmlinux);
    }
    require(KERNEL_PROGRAMS)?;
    let started = Instant::now();
    let work = temp_sibling(&dir)?;
    progress.step(0, 4, &format!("kernel: unpacking {}", source.display()));
    run(Command::new("tar").arg("xf").arg(&source).arg("-C").arg(&work))?;
    let src = std::fs::read_dir(&work)
        .map_err(io("reading", &work))?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.is_dir())
        .ok_or_else(|| ImageError::Command {
            command: format!("tar xf {}", source.display()),
            status: "ok".into(),
            tail: "no directory in the tarball".into(),
        })?;
    for (name, text) in &KERNEL_PATCHES {
        let p = work.join(name);
        write_file(&p, text.as_bytes(), 0o644)?;
        run(Command::new("patch")
            .current_dir(&src)
            .args(["-p1", "--batch", "--forward", "--input"])
            .arg(&p))?;
    }
    run(Command::new("make").arg("-C").arg(&src).arg("tinyconfig"))?;
    let mut frag_paths = Vec::new();
    for (name, text) in fragments {
        let p = work.join(format!("{name}.config"));
        write_file(&p, text.as_bytes(), 0o644)?;
        frag_paths.push(p);
    }
    run(Command::new("scripts/kconfig/merge_config.sh")
        .current_dir(&src)
        .arg("-m")
        .arg(".config")
        .args(&frag_paths))?;
    run(Command::new("make").arg("-C").arg(&src).arg("olddefconfig"))?;
    let config = std::fs::read_to_string(src.join(".config")).map_err(io("reading", &src))?;
    for (name, text) in fragments {
        for line in text.lines().filter(|l| l.starts_with("CONFIG_") && l.ends_with("=y")) {
            if !config.lines().any(|c| c == line) {
                eprintln!(
                    "kernel: warning: {line} from {name}.config did not survive olddefconfig"
                );
            }
        }
    }
    let jobs = std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get);
    progress.step(1, 4, &format!("kernel: make -j{jobs} vmlinux (minutes)"));
    run(Command::new("make").arg("-C").arg(&src).arg(format!("-j{jobs}")).arg("vmlinux"))?;
    let out = work.join("out");
    std::fs::create_dir_all(&out).map_err(io("creating", &out))?;
    std::fs::copy(src.join("vmlinux"), out.join("vmlinux"))
        .map_err(io("copying vmlinux from", &src))?;
    std::fs::copy(src.join(".config"), out.join("config"))
        .map_err(io("copying .config from", &src))?;
    std::fs::write(out.join("build-seconds"), format!("{:.0}\n", started.elapsed().as_secs_f64()))
        .map_err(io("writing", &out))?;
    rename_into_place(&out, &dir)?;
    let _ = std::fs::remove_dir_all(&work);
    progress.step(2, 4, &format!("kernel built in {:.0} s", started.elapsed().as_secs_f64()));
    Ok(vmlinux)
}

/// Debian's stock kernel and the initramfs that boots it into the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StockKernel {
    /// `vmlinuz` (bzImage).
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// The Debian package it came from (`linux-image-6.1.0-48-cloud-amd64`).
    pub package: String,
}

/// The modules the initramfs loads (with their dependencies): the root
/// disk, the agent's virtio-serial port, the network, the RNG.
const STOCK_MODULES: [&str; 5] =
    ["virtio_mmio", "virtio_blk", "virtio_console", "virtio_net", "virtio_rng"];

/// Fetches (or finds in the cache) Debian's stock cloud kernel and builds
/// its initramfs. Needs `apt-get` with package lists (no root: nothing is
/// installed).
pub fn stock_kernel_fetch(
    cache: &Path,
    progress: &mut dyn Progress,
) -> Result<StockKernel, ImageError> {
    require(STOCK_PROGRAMS)?;
    let out = hangar_exec::output(
        Command::new("apt-cache").args(["depends", "linux-image-cloud-amd64"]),
    )?;
    let package = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .find(|p| p.starts_with("linux-image-") && p.ends_with("-cloud-amd64"))
        .map(str::to_owned)
        .ok_or_else(|| ImageError::Command {
            command: "apt-cache depends linux-image-cloud-amd64".into(),
            status: out.status.to_string(),
            tail: "no linux-image-*-cloud-amd64 dependency (run apt-get update?)".into(),
        })?;
    let mut h = Sha256::new();
    h.update(package.as_bytes());
    h.update(stock_init_script().as_bytes());
    h.update(STOCK_MODULES.join(",").as_bytes());
    // Version 2: written in process (version 1 piped `find | cpio | gzip`,
    // which wrote an empty archive where `cpio` was missing).
    h.update(b"initramfs-v2");
    let key = hex::encode(h.finalize())[..8].to_owned();
    let dir = cache.join("kernels").join(format!("stock-{package}-{key}"));
    let stock = StockKernel {
        kernel: dir.join("vmlinuz"),
        initrd: dir.join("initrd.cpio.gz"),
        package: package.clone(),
    };
    if stock.kernel.exists() && stock.initrd.exists() {
        return Ok(stock);
    }
    progress.step(1, 4, &format!("kernel: fetching Debian's stock kernel {package}"));
    let work = temp_sibling(&dir)?;
    run(Command::new("apt-get").current_dir(&work).args([
        "download",
        "-q",
        &package,
        "busybox-static",
    ]))?;
    let x = work.join("x");
    for deb in std::fs::read_dir(&work).map_err(io("reading", &work))?.flatten() {
        if deb.path().extension().is_some_and(|e| e == "deb") {
            run(Command::new("dpkg-deb").arg("-x").arg(deb.path()).arg(&x))?;
        }
    }
    let version = package.trim_start_matches("linux-image-");
    let modules_dir = x.join("lib/modules").join(version);
    let mut by_name = std::collections::HashMap::new();
    index_modules(&modules_dir, &mut by_name)?;
    let mut order: Vec<String> = Vec::new();
    for m in STOCK_MODULES {
        module_resolve(m, &by_name, &mut order)?;
    }

    progress.step(2, 4, "kernel: packing the stock kernel's initramfs");
    let out_dir = work.join("out");
    std::fs::create_dir_all(&out_dir).map_err(io("creating", &out_dir))?;
    let initrd = out_dir.join("initrd.cpio.gz");
    let modules: Vec<(String, &Path)> =
        order.iter().map(|name| (name.clone(), by_name[name].as_path())).collect();
    stock_initramfs_write(&initrd, &x.join("bin/busybox"), &modules)?;
    let vmlinuz = x.join("boot").join(format!("vmlinuz-{version}"));
    std::fs::copy(&vmlinuz, out_dir.join("vmlinuz")).map_err(io("copying", &vmlinuz))?;
    write_file(&out_dir.join("package"), package.as_bytes(), 0o644)?;
    rename_into_place(&out_dir, &dir)?;
    let _ = std::fs::remove_dir_all(&work);
    progress.step(3, 4, &format!("kernel: using Debian's stock kernel {package} (fallback)"));
    Ok(stock)
}

/// Writes the stock kernel's initramfs to `path`: a static busybox, the
/// kernel `modules` (name, `.ko`) in load order (`/modules.order`), and
/// [`stock_init_script`] as `/init`.
fn stock_initramfs_write(
    path: &Path,
    busybox: &Path,
    modules: &[(String, &Path)],
) -> Result<(), ImageError> {
    // A failure leaves a partial file in the build's temporary directory,
    // which is never renamed into the cache.
    let file = std::fs::File::create(path).map_err(io("creating", path))?;
    let mut archive = crate::initramfs::GzNewc::new(std::io::BufWriter::new(file));
    for dir in ["bin", "dev", "proc", "sys", "newroot", "modules"] {
        archive.dir(dir, 0o755).map_err(io("writing", path))?;
    }
    let bytes = std::fs::read(busybox).map_err(io("reading", busybox))?;
    archive.file("bin/busybox", 0o755, &bytes).map_err(io("writing", path))?;
    for (name, ko) in modules {
        let bytes = std::fs::read(ko).map_err(io("reading", ko))?;
        archive.file(&format!("modules/{name}.ko"), 0o644, &bytes).map_err(io("writing", path))?;
    }
    let order: Vec<&str> = modules.iter().map(|(name, _)| name.as_str()).collect();
    archive
        .file("modules.order", 0o644, order.join("\n").as_bytes())
        .map_err(io("writing", path))?;
    archive.file("init", 0o755, stock_init_script().as_bytes()).map_err(io("writing", path))?;
    archive
        .finish()
        .and_then(|w| w.into_inner().map_err(std::io::IntoInnerError::into_error))
        .and_then(|f| f.sync_all())
        .map_err(io("writing", path))
}

/// The initramfs's `/init`: load the virtio modules, mount the root disk,
/// make the guest agent PID 1 there.
fn stock_init_script() -> String {
    format!(
        r#"#!/bin/busybox sh
# hangar's initramfs for Debian's stock kernel (its virtio drivers are modules).
B=/bin/busybox
$B mount -t proc proc /proc
$B mount -t devtmpfs dev /dev
for m in $($B cat /modules.order); do
    $B insmod /modules/$m.ko || echo "hangar-initramfs: insmod $m failed"
done
i=0
while [ ! -b /dev/vda ] && [ $i -lt 1000 ]; do $B sleep 0.01; i=$((i+1)); done
$B mount -t ext4 -o rw /dev/vda /newroot || {{ echo "hangar-initramfs: no root disk"; $B reboot -f; }}
$B umount /proc
$B umount /dev
exec $B switch_root /newroot {agent}
"#,
        agent = hangar_guest_agent::AGENT_PATH
    )
}

/// Module name (`-` as `_`) → its `.ko` under `dir`.
fn index_modules(
    dir: &Path,
    out: &mut std::collections::HashMap<String, PathBuf>,
) -> Result<(), ImageError> {
    for entry in std::fs::read_dir(dir).map_err(io("reading", dir))?.flatten() {
        let path = entry.path();
        if path.is_dir() {
            index_modules(&path, out)?;
        } else if let Some(stem) =
            path.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_suffix(".ko"))
        {
            out.insert(stem.replace('-', "_"), path);
        }
    }
    Ok(())
}

/// Appends `name` after its dependencies (read from the module's
/// `.modinfo` `depends=` entry) to `order`.
fn module_resolve(
    name: &str,
    by_name: &std::collections::HashMap<String, PathBuf>,
    order: &mut Vec<String>,
) -> Result<(), ImageError> {
    let name = name.replace('-', "_");
    if order.contains(&name) {
        return Ok(());
    }
    // Not a module in this kernel: built in (or absent; then the initramfs
    // says which device is missing at boot).
    let Some(path) = by_name.get(&name) else { return Ok(()) };
    let bytes = std::fs::read(path).map_err(io("reading", path))?;
    let depends = bytes
        .split(|b| *b == 0)
        .find_map(|field| field.strip_prefix(b"depends="))
        .map(|d| String::from_utf8_lossy(d).into_owned())
        .unwrap_or_default();
    for dep in depends.split(',').filter(|d| !d.is_empty()) {
        module_resolve(dep, by_name, order)?;
    }
    order.push(name);
    Ok(())
}

/// Debian's newest `linux-source-*` tarball.
pub fn kernel_source() -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/src")
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name().is_some_and(|n| {
                let n = n.to_string_lossy();
                n.starts_with("linux-source-") && n.ends_with(".tar.xz")
            })
        })
        .collect();
    found.sort();
    found.pop()
}

fn tree_build(cache: &Path, spec: &ImageSpec) -> Result<PathBuf, ImageError> {
    let mut packages = spec.packages.clone();
    packages.push("iproute2".into());
    packages.sort();
    packages.dedup();
    let mut h = Sha256::new();
    h.update(spec.suite.as_bytes());
    h.update([0]);
    h.update(spec.mirror.as_bytes());
    h.update([0]);
    h.update(packages.join(",").as_bytes());
    let key = hex::encode(h.finalize())[..16].to_owned();
    let dir = cache.join("trees").join(&key);
    if dir.join(".complete").exists() {
        return Ok(dir);
    }
    let work = temp_sibling(&dir)?;
    let root = work.join("root");
    run(Command::new("debootstrap")
        .arg("--variant=minbase")
        .arg(format!("--include={}", packages.join(",")))
        .arg(&spec.suite)
        .arg(&root)
        .arg(&spec.mirror))?;
    run(Command::new("chroot").arg(&root).args([
        "useradd",
        "-m",
        "-u",
        "1000",
        "-s",
        "/bin/bash",
        RUNNER_USER,
    ]))?;
    if packages.iter().any(|p| p == "docker.io") {
        run(Command::new("chroot").arg(&root).args(["usermod", "-aG", "docker", RUNNER_USER]))?;
    }
    run(Command::new("chroot").arg(&root).args(["apt-get", "clean"]))?;
    let lists = root.join("var/lib/apt/lists");
    let _ = std::fs::remove_dir_all(&lists);
    let _ = std::fs::create_dir_all(lists.join("partial"));
    write_file(&root.join(".complete"), b"", 0o644)?;
    rename_into_place(&root, &dir)?;
    let _ = std::fs::remove_dir_all(&work);
    Ok(dir)
}

/// The agent's config for `spec`, with the runner account looked up in the
/// root filesystem `tree` that the image is packed from.
fn agent_config(spec: &ImageSpec, tree: &Path) -> Result<AgentConfig, ImageError> {
    let runner_command = match &spec.runner {
        RunnerSource::Release { .. } => vec![
            "/home/runner/actions-runner/run.sh".into(),
            "--jitconfig".into(),
            hangar_guest_agent::JIT_CONFIG_MARKER.into(),
        ],
        RunnerSource::Local { command, .. } => command.clone(),
        RunnerSource::TestRunner { .. } => vec![
            "/usr/local/bin/hangar-test-runner".into(),
            "--jitconfig".into(),
            hangar_guest_agent::JIT_CONFIG_MARKER.into(),
        ],
    };
    let read = |file: &str| {
        let path = tree.join(file);
        std::fs::read_to_string(&path).map_err(io("reading", &path))
    };
    let bad = |message: String| ImageError::RunnerUser { tree: tree.to_owned(), message };
    let runner_user =
        hangar_guest_agent::users::lookup(&read("etc/passwd")?, &read("etc/group")?, RUNNER_USER)
            .map_err(bad)?;
    if runner_user.supplementary_groups && !tree.join("usr/bin/setpriv").exists() {
        return Err(bad(format!(
            "{RUNNER_USER} has supplementary groups, which the agent sets with /usr/bin/setpriv, \
             and the tree has none (add util-linux)"
        )));
    }
    Ok(AgentConfig {
        runner_command,
        runner_user,
        runner_workdir: "/home/runner".into(),
        dockerd: spec.dockerd.clone(),
    })
}

fn runner_install(root: &Path, runner: &RunnerSource) -> Result<(), ImageError> {
    match runner {
        RunnerSource::TestRunner { standin } => {
            if let Some(standin) = standin {
                let dest = root.join(STANDIN_PATH.trim_start_matches('/'));
                // Debug symbols would take most of the image.
                run(Command::new("objcopy").arg("--strip-debug").arg(standin).arg(&dest))?;
                set_mode(&dest, 0o755)?;
            }
            write_file(
                &root.join("usr/local/bin/hangar-test-runner"),
                TEST_RUNNER.as_bytes(),
                0o755,
            )
        }
        RunnerSource::Local { path, dest, .. } => {
            let dest = root.join(dest.trim_start_matches('/'));
            if let Some(parent) = dest.parent() {
                std::fs::create_dir_all(parent).map_err(io("creating", parent))?;
            }
            run(Command::new("cp").arg("-a").arg(path).arg(&dest))?;
            run(Command::new("chroot")
                .arg(root)
                .args(["chown", "-R", "runner:runner"])
                .arg(Path::new("/").join(dest.strip_prefix(root).unwrap_or(&dest))))?;
            Ok(())
        }
        RunnerSource::Release { version } => {
            let url = format!(
                "https://github.com/actions/runner/releases/download/v{version}/actions-runner-linux-x64-{version}.tar.gz"
            );
            let tarball = root.join("tmp/actions-runner.tar.gz");
            run(Command::new("curl").args(["-fsSL", "-o"]).arg(&tarball).arg(&url))?;
            let dest = root.join("home/runner/actions-runner");
            std::fs::create_dir_all(&dest).map_err(io("creating", &dest))?;
            run(Command::new("tar").arg("xzf").arg(&tarball).arg("-C").arg(&dest))?;
            let _ = std::fs::remove_file(&tarball);
            run(Command::new("chroot")
                .arg(root)
                .args(["/home/runner/actions-runner/bin/installdependencies.sh"]))?;
            run(Command::new("chroot").arg(root).args([
                "chown",
                "-R",
                "runner:runner",
                "/home/runner/actions-runner",
            ]))?;
            Ok(())
        }
    }
}

fn hash_path(h: &mut Sha256, path: &Path) -> Result<(), ImageError> {
    let meta = std::fs::metadata(path).map_err(io("reading", path))?;
    if meta.is_dir() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(io("reading", path))?
            .flatten()
            .map(|e| e.path())
            .collect();
        entries.sort();
        for e in entries {
            h.update(e.as_os_str().as_encoded_bytes());
            hash_path(h, &e)?;
        }
    } else {
        h.update(std::fs::read(path).map_err(io("reading", path))?);
    }
    Ok(())
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> ImageError + 'a {
    move |source| ImageError::Io { what, path: path.to_owned(), source }
}

fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), ImageError> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io("creating", parent))?;
    }
    let mut f = std::fs::File::create(path).map_err(io("creating", path))?;
    f.write_all(bytes).map_err(io("writing", path))?;
    set_mode(path, mode)
}

fn set_mode(path: &Path, mode: u32) -> Result<(), ImageError> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(io("chmod", path))
}

/// A fresh temporary directory next to `dir` (same file system, so the
/// final rename is atomic). Siblings left by builds whose process is gone
/// (killed mid-build: a kernel tree is 1.5 GB) are removed first.
fn temp_sibling(dir: &Path) -> Result<PathBuf, ImageError> {
    let parent = dir.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(io("creating", parent))?;
    let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let stale_prefix = format!(".{name}.tmp-");
    for entry in std::fs::read_dir(parent).map_err(io("listing", parent))?.flatten() {
        let file_name = entry.file_name();
        let Some(pid) = file_name.to_str().and_then(|n| n.strip_prefix(&stale_prefix)) else {
            continue;
        };
        if pid.parse::<u32>().is_ok_and(|pid| !Path::new(&format!("/proc/{pid}")).exists()) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
    let work = parent.join(format!(".{name}.tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).map_err(io("creating", &work))?;
    Ok(work)
}

fn rename_into_place(from: &Path, to: &Path) -> Result<(), ImageError> {
    let _ = std::fs::remove_dir_all(to);
    std::fs::rename(from, to).map_err(io("renaming into", to))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_siblings_of_dead_builds_are_removed() {
        let root = tempfile::tempdir().unwrap();
        let target = root.path().join("abc");
        // No process has pid u32::MAX - 1 (pid_max is at most 2^22).
        let dead = root.path().join(format!(".abc.tmp-{}", u32::MAX - 1));
        let alive = root.path().join(".abc.tmp-1");
        let other = root.path().join(".xyz.tmp-4294967294");
        for d in [&dead, &alive, &other] {
            std::fs::create_dir_all(d.join("tree")).unwrap();
        }
        let work = temp_sibling(&target).unwrap();
        assert!(work.is_dir());
        assert!(!dead.exists(), "a dead build's tree is removed");
        assert!(alive.exists(), "a live process's tree (pid 1) is kept");
        assert!(other.exists(), "other targets' trees are not touched");
    }

    #[test]
    fn the_shipped_specs_parse() {
        let test = ImageSpec::parse(TEST_SPEC, Path::new("test.toml")).unwrap();
        assert_eq!(test.runner, RunnerSource::TestRunner { standin: None });
        assert!(test.fragments().unwrap().len() == 1);
        let full =
            ImageSpec::parse(include_str!("../images/full.toml"), Path::new("full.toml")).unwrap();
        assert!(full.packages.iter().any(|p| p == "build-essential"));
        assert_eq!(full.fragments().unwrap().len(), 2);
    }

    /// A root filesystem tree with just the account files.
    fn tree(passwd: &str, group: &str, setpriv: bool) -> tempfile::TempDir {
        let tree = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tree.path().join("etc")).unwrap();
        std::fs::write(tree.path().join("etc/passwd"), passwd).unwrap();
        std::fs::write(tree.path().join("etc/group"), group).unwrap();
        if setpriv {
            std::fs::create_dir_all(tree.path().join("usr/bin")).unwrap();
            std::fs::write(tree.path().join("usr/bin/setpriv"), "").unwrap();
        }
        tree
    }

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/bash\n\
                          runner:x:1000:1000::/home/runner:/bin/bash\n";

    #[test]
    fn agent_config_has_the_jit_marker_the_account_and_no_secret() {
        let spec = ImageSpec::parse(TEST_SPEC, Path::new("test.toml")).unwrap();
        let tree = tree(PASSWD, "root:x:0:\nrunner:x:1000:\n", false);
        let config = agent_config(&spec, tree.path()).unwrap();
        assert!(config.runner_command.iter().any(|a| a == hangar_guest_agent::JIT_CONFIG_MARKER));
        assert_eq!(config.runner_user.name, "runner");
        assert_eq!((config.runner_user.uid, config.runner_user.gid), (1000, 1000));
        assert_eq!(config.runner_user.home, "/home/runner");
        assert!(!config.runner_user.supplementary_groups);
    }

    #[test]
    fn a_tree_without_the_runner_user_or_setpriv_fails_the_build() {
        let spec = ImageSpec::parse(TEST_SPEC, Path::new("test.toml")).unwrap();
        let nobody = tree("root:x:0:0:root:/root:/bin/bash\n", "root:x:0:\n", false);
        let e = agent_config(&spec, nobody.path()).unwrap_err().to_string();
        assert!(e.contains("runner user") && e.contains("/etc/passwd"), "{e}");
        let docker = "runner:x:1000:\ndocker:x:999:runner\n";
        let e = agent_config(&spec, tree(PASSWD, docker, false).path()).unwrap_err().to_string();
        assert!(e.contains("setpriv"), "{e}");
        let config = agent_config(&spec, tree(PASSWD, docker, true).path()).unwrap();
        assert!(config.runner_user.supplementary_groups);
    }

    #[test]
    fn the_stock_initramfs_holds_busybox_the_modules_in_order_and_init() {
        let dir = tempfile::tempdir().unwrap();
        let busybox = dir.path().join("busybox");
        std::fs::write(&busybox, b"\x7fELF busybox").unwrap();
        let (core, blk) = (dir.path().join("virtio.ko"), dir.path().join("virtio_blk.ko"));
        std::fs::write(&core, b"core module").unwrap();
        std::fs::write(&blk, b"blk module").unwrap();
        let initrd = dir.path().join("initrd.cpio.gz");
        let modules = [("virtio".to_owned(), core.as_path()), ("virtio_blk".into(), blk.as_path())];
        stock_initramfs_write(&initrd, &busybox, &modules).unwrap();

        let entries = crate::initramfs::list_gz(&std::fs::read(&initrd).unwrap());
        let find = |name: &str| {
            entries.iter().find(|(n, _, _)| n == name).unwrap_or_else(|| panic!("no {name}"))
        };
        for d in ["bin", "dev", "proc", "sys", "newroot", "modules"] {
            assert_eq!(find(d).1, 0o040755, "{d} is a directory");
        }
        assert_eq!(find("bin/busybox").2, b"\x7fELF busybox");
        assert_eq!(find("bin/busybox").1, 0o100755);
        assert_eq!(find("modules/virtio_blk.ko").2, b"blk module");
        assert_eq!(find("modules.order").2, b"virtio\nvirtio_blk");
        let init = find("init");
        assert_eq!(init.1, 0o100755);
        assert_eq!(init.2, stock_init_script().as_bytes());
        assert!(init.2.starts_with(b"#!/bin/busybox sh"));
    }

    #[test]
    fn a_missing_busybox_fails_the_initramfs() {
        let dir = tempfile::tempdir().unwrap();
        let initrd = dir.path().join("initrd.cpio.gz");
        let e = stock_initramfs_write(&initrd, &dir.path().join("no-busybox"), &[]).unwrap_err();
        assert!(e.to_string().contains("no-busybox"), "{e}");
    }
}
