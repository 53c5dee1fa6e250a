//! Which cached image a pool without `kernel`/`rootfs` boots: only one
//! whose files and every directory above them are owned by root or
//! hangar's user, writable by no one else, and named inside the image's
//! own directory (review M11: a spoofed `image.json` in a shared cache
//! picks the PID 1 that receives every JIT config).

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use hangar_provider_microvm::image::{ImageError, ImageInfo, image_newest_trusted, image_trusted};

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// An image as `hangar image build` lays it out, under `cache/images/`.
fn image(cache: &Path, name: &str, built_at: &str) -> (PathBuf, ImageInfo) {
    let dir = cache.join("images").join(name);
    std::fs::create_dir_all(&dir).unwrap();
    for d in [cache, &cache.join("images"), &dir] {
        chmod(d, 0o755);
    }
    for (file, mode) in [("vmlinux", 0o644), ("rootfs.raw", 0o444)] {
        std::fs::write(dir.join(file), b"x").unwrap();
        chmod(&dir.join(file), mode);
    }
    let info = ImageInfo {
        name: name.into(),
        key: "0123456789abcdef".into(),
        kernel: dir.join("vmlinux"),
        initrd: None,
        kernel_kind: "built".into(),
        rootfs: dir.join("rootfs.raw"),
        size_bytes: 1,
        built_at: built_at.into(),
        build_seconds: 1.0,
    };
    write_info(&dir, &info);
    (dir, info)
}

fn write_info(dir: &Path, info: &ImageInfo) {
    std::fs::write(dir.join("image.json"), serde_json::to_vec(info).unwrap()).unwrap();
    chmod(&dir.join("image.json"), 0o644);
}

fn why(result: Result<(), ImageError>) -> String {
    match result {
        Ok(()) => panic!("the image was trusted"),
        Err(e) => e.to_string(),
    }
}

/// A private base for caches (the target dir; never under `/tmp`).
fn base() -> tempfile::TempDir {
    let root = Path::new(env!("CARGO_TARGET_TMPDIR"));
    std::fs::create_dir_all(root).unwrap();
    let dir = tempfile::tempdir_in(root).unwrap();
    chmod(dir.path(), 0o755);
    dir
}

#[test]
fn a_private_image_is_trusted_and_loose_or_escaping_ones_are_not() {
    let base = base();
    let cache = base.path().join("cache");
    let (dir, info) = image(&cache, "good", "2026-01-01");
    if let Err(e) = image_trusted(&dir, &info) {
        // The machine's own directories above the target dir decide this
        // one; everything below is the test's.
        let text = e.to_string();
        assert!(!text.contains(&*cache.to_string_lossy()), "{text}");
        eprintln!("SKIPPED the positive case: {text}");
    }

    chmod(&dir, 0o777);
    assert!(why(image_trusted(&dir, &info)).contains("writable by group or others"));
    chmod(&dir, 0o755);
    chmod(&cache.join("images"), 0o775);
    assert!(why(image_trusted(&dir, &info)).contains("writable by group or others"));
    chmod(&cache.join("images"), 0o755);
    chmod(&info.rootfs, 0o666);
    assert!(why(image_trusted(&dir, &info)).contains("rootfs.raw"));
    chmod(&info.rootfs, 0o444);

    // image.json pointing at somebody else's kernel.
    let elsewhere = base.path().join("evil-vmlinux");
    std::fs::write(&elsewhere, b"x").unwrap();
    let escaping = ImageInfo { kernel: elsewhere, ..info.clone() };
    write_info(&dir, &escaping);
    assert!(why(image_trusted(&dir, &escaping)).contains("outside"));
    let dotdot = ImageInfo { rootfs: dir.join("../good/../../../evil-vmlinux"), ..info.clone() };
    assert!(why(image_trusted(&dir, &dotdot)).contains("outside"));
    write_info(&dir, &info);

    if nix::unistd::geteuid().is_root() {
        nix::unistd::chown(&info.kernel, Some(nix::unistd::Uid::from_raw(4321)), None).unwrap();
        assert!(why(image_trusted(&dir, &info)).contains("owned by uid 4321"));
    }
}

#[test]
fn a_cache_in_a_shared_directory_is_refused_even_when_sticky() {
    // `/tmp` is root's and sticky, but anyone may create in it.
    let tmp = tempfile::tempdir_in("/tmp").unwrap();
    chmod(tmp.path(), 0o755);
    let (dir, info) = image(&tmp.path().join("cache"), "x", "9999");
    let text = why(image_trusted(&dir, &info));
    assert!(text.contains("untrusted image /tmp"), "{text}");
}

#[test]
fn the_newest_trusted_image_wins_over_a_newer_untrusted_one() {
    let base = base();
    let cache = base.path().join("cache");
    let (good, good_info) = image(&cache, "good", "2026-01-01");
    if image_trusted(&good, &good_info).is_err() {
        eprintln!("SKIPPED: the target dir's parents are not private on this machine");
        return;
    }
    let (bad, _) = image(&cache, "planted", "9999-12-31");
    chmod(&bad, 0o777);
    assert_eq!(image_newest_trusted(&cache).unwrap(), good_info);
    std::fs::remove_dir_all(&good).unwrap();
    let e = image_newest_trusted(&cache).unwrap_err().to_string();
    assert!(e.contains("that hangar may boot") && e.contains("planted"), "{e}");
    let empty = base.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    assert!(image_newest_trusted(&empty).unwrap_err().to_string().contains("no microVM image in"));
}
