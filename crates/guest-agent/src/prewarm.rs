//! Warming the page cache for the runner's `execve`.
//!
//! A pre-booted VM's dispatch is one fork and one exec of the runner
//! command. When that program has never been read, the exec waits for the
//! disk several times: the program (a `#!` script, like the Actions
//! runner's `run.sh`), then its interpreter, then the interpreter's dynamic
//! loader. Under emulation each of those reads costs milliseconds. Once it
//! has said `ready`, the agent asks the kernel to read these files ahead
//! (`POSIX_FADV_WILLNEED`, which does not wait), so the exec finds them in
//! memory. Finding them reads their first bytes, which is why this does not
//! come before `ready`.

use std::fs::File;
use std::os::fd::AsRawFd as _;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};

use nix::fcntl::{PosixFadviseAdvice, posix_fadvise};

/// How many `#!` interpreters the kernel follows before giving up.
const MAX_INTERPRETERS: usize = 4;

/// Asks the kernel to read ahead every file an exec of `program` reads.
/// Returns the files it could open, in the order the exec reads them.
pub fn prewarm(program: &Path) -> Vec<PathBuf> {
    walk(program, |file| {
        let _ = posix_fadvise(file.as_raw_fd(), 0, 0, PosixFadviseAdvice::POSIX_FADV_WILLNEED);
    })
}

/// The program, then each interpreter the exec goes through: the one named
/// by a `#!` line, and the dynamic loader an ELF names (`PT_INTERP`).
pub fn exec_files(program: &Path) -> Vec<PathBuf> {
    walk(program, |_| {})
}

/// Follows the exec chain from `program`, calling `visit` on each file
/// once it is open (before its header is read), and returns the paths.
fn walk(program: &Path, mut visit: impl FnMut(&File)) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut next = Some(program.to_owned());
    while let Some(path) = next.take() {
        if files.len() > MAX_INTERPRETERS || files.contains(&path) {
            break;
        }
        let Ok(file) = File::open(&path) else { break };
        visit(&file);
        next = interpreter(&file);
        files.push(path);
    }
    files
}

/// The interpreter a `#!` script or a dynamically linked ELF names.
fn interpreter(file: &File) -> Option<PathBuf> {
    let mut head = [0u8; 256];
    let n = read_at_most(file, &mut head, 0)?;
    let head = &head[..n];
    if let Some(line) = head.strip_prefix(b"#!") {
        let line = line.split(|&b| b == b'\n').next()?;
        let line = std::str::from_utf8(line).ok()?;
        return line.split_whitespace().next().map(PathBuf::from);
    }
    elf_interpreter(file, head)
}

/// `PT_INTERP` of a little-endian ELF64 (the only kind this guest runs).
fn elf_interpreter(file: &File, head: &[u8]) -> Option<PathBuf> {
    const PT_INTERP: u32 = 3;
    if head.get(..6)? != b"\x7fELF\x02\x01" {
        return None;
    }
    let u16_at =
        |b: &[u8], at: usize| Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?));
    let u32_at =
        |b: &[u8], at: usize| Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?));
    let u64_at =
        |b: &[u8], at: usize| Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?));
    let phoff = u64_at(head, 0x20)?;
    let phentsize = usize::from(u16_at(head, 0x36)?);
    let phnum = u16_at(head, 0x38)?;
    if phentsize < 56 {
        return None;
    }
    let mut phdr = vec![0u8; phentsize];
    for i in 0..u64::from(phnum) {
        let at = phoff.checked_add(i.checked_mul(phentsize as u64)?)?;
        if read_at_most(file, &mut phdr, at)? < phentsize {
            return None;
        }
        if u32_at(&phdr, 0)? != PT_INTERP {
            continue;
        }
        let offset = u64_at(&phdr, 8)?;
        let size = usize::try_from(u64_at(&phdr, 32)?).ok().filter(|&s| s <= 4096)?;
        let mut name = vec![0u8; size];
        file.read_exact_at(&mut name, offset).ok()?;
        let name = name.split(|&b| b == 0).next()?;
        return std::str::from_utf8(name).ok().map(PathBuf::from);
    }
    None
}

/// Reads up to `buf.len()` bytes at `offset`; `None` on an I/O error.
fn read_at_most(file: &File, buf: &mut [u8], offset: u64) -> Option<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read_at(&mut buf[filled..], offset + filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
    Some(filled)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_script_leads_to_its_interpreter_and_that_to_its_loader() {
        let dir = tempfile::tempdir().expect("tempdir");
        let script = dir.path().join("run.sh");
        std::fs::write(&script, "#!/bin/sh -e\necho hi\n").expect("write");
        let files = exec_files(&script);
        assert_eq!(files[0], script);
        assert_eq!(files[1], Path::new("/bin/sh"));
        // Debian's /bin/sh (dash) is dynamically linked: its loader follows.
        let loader = files.get(2).expect("a loader after /bin/sh");
        assert!(loader.to_string_lossy().contains("ld-linux"), "{files:?}");
        assert_eq!(files.len(), 3, "{files:?}");
        assert_eq!(prewarm(&script), files);
    }

    #[test]
    fn a_static_binary_and_odd_files_stop_the_chain() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        std::fs::write(&data, [0x7f, b'E', b'L', b'F', 2, 1, 0, 0]).expect("write");
        assert_eq!(exec_files(&data), vec![data], "a truncated ELF names nothing");
        let missing = dir.path().join("missing");
        assert!(exec_files(&missing).is_empty());
        let looping = dir.path().join("loop");
        std::fs::write(&looping, format!("#!{}\n", looping.display())).expect("write");
        assert_eq!(exec_files(&looping), vec![looping], "a self-reference ends");
        let dangling = dir.path().join("dangling");
        std::fs::write(&dangling, "#!/nonexistent/interpreter\n").expect("write");
        assert_eq!(exec_files(&dangling), vec![dangling]);
    }
}
