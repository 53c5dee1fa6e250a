//! Running external programs: the one place that starts a program that
//! runs to completion, checks its exit status, and, when the program is not
//! installed, says which Debian package provides it.
//!
//! - [`run`] / [`output`]: run a [`Command`] with its output captured;
//!   a non-zero exit is [`ExecError::Failed`] with the last lines it printed.
//! - [`output_within`] / [`run_within`]: the same with a deadline; a
//!   program still running then is killed and is [`ExecError::TimedOut`]
//!   (every call on a path a VM launch waits for has one: `ip`, `nft`,
//!   `qemu-img`).
//! - [`status`]: the same with inherited stdio (xtask's long builds).
//! - [`check`]: the same check for an output obtained elsewhere (a
//!   `tokio::process::Command`, a child fed on stdin).
//! - [`require`]: checked up front, before a long build: every program (or
//!   file, when it starts with `/`) is there, else one error naming all the
//!   missing ones and their packages.
//!
//! No shell: programs get their arguments as a list, and a pipeline is
//! written as Rust (a failing stage cannot be lost; `cargo xtask tidy`
//! rejects `sh -c`).

use std::ffi::OsStr;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

/// The Debian package that provides each program (or file) hangar and its
/// test command run or need. [`require`] and the "not found" errors name
/// these; `cargo xtask test` installs them.
pub const PACKAGES: &[(&str, &str)] = &[
    // coreutils and other essentials, present on every Debian system.
    ("cp", "coreutils"),
    ("chroot", "coreutils"),
    ("truncate", "coreutils"),
    ("sync", "coreutils"),
    ("sha256sum", "coreutils"),
    ("kill", "procps"),
    ("cmp", "diffutils"),
    ("getconf", "libc-bin"),
    ("runuser", "util-linux"),
    ("apt-get", "apt"),
    ("apt-cache", "apt"),
    ("dpkg-deb", "dpkg"),
    // `hangar image build`.
    ("debootstrap", "debootstrap"),
    ("mkfs.ext4", "e2fsprogs"),
    ("objcopy", "binutils"),
    ("curl", "curl"),
    ("tar", "tar"),
    ("xz", "xz-utils"),
    // Building the guest kernel from Debian's source.
    ("/usr/src/linux-source-6.1.tar.xz", "linux-source-6.1"),
    ("patch", "patch"),
    ("make", "make"),
    ("gcc", "gcc"),
    ("/usr/include/stdio.h", "libc6-dev"),
    ("flex", "flex"),
    ("bison", "bison"),
    ("bc", "bc"),
    ("/usr/include/libelf.h", "libelf-dev"),
    // The microVM provider at run time.
    ("qemu-system-x86_64", "qemu-system-x86"),
    ("qemu-img", "qemu-utils"),
    ("nft", "nftables"),
    ("ip", "iproute2"),
    // The test command's services and clients.
    ("node", "nodejs"),
    ("npm", "npm"),
    ("zstd", "zstd"),
    ("python3", "python3"),
    ("/usr/share/doc/python3-venv", "python3-venv"),
    ("/usr/lib/postgresql", "postgresql"),
];

/// The Debian package that provides `program` (a name, a path, or a file
/// probe from [`PACKAGES`]).
pub fn package_of(program: &str) -> Option<&'static str> {
    let name = if program.starts_with('/') && !PACKAGES.iter().any(|(p, _)| *p == program) {
        Path::new(program).file_name()?.to_str()?
    } else {
        program
    };
    PACKAGES.iter().find(|(p, _)| *p == name).map(|(_, package)| *package)
}

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// Programs (or files) that are not installed, with their packages.
    #[error("{}", missing_message(.0))]
    Missing(Vec<Missing>),
    #[error("could not start `{command}`")]
    Start {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` failed ({status}){}", tail_message(.tail))]
    Failed { command: String, status: ExitStatus, tail: String },
    /// Still running at its deadline; it was killed.
    #[error("`{command}` did not finish within {after:?}; killed it")]
    TimedOut { command: String, after: Duration },
}

/// A program (or file) that is not there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Missing {
    pub program: String,
    /// The Debian package that provides it, when known.
    pub package: Option<&'static str>,
}

fn missing_message(missing: &[Missing]) -> String {
    let parts: Vec<String> = missing
        .iter()
        .map(|m| match m.package {
            Some(p) => format!("`{}` not found: install the Debian package {p}", m.program),
            None => format!("`{}` not found (not installed or not on PATH)", m.program),
        })
        .collect();
    let mut text = parts.join("; ");
    let mut packages: Vec<&str> = Vec::new();
    for package in missing.iter().filter_map(|m| m.package) {
        if !packages.contains(&package) {
            packages.push(package);
        }
    }
    if missing.len() > 1 && !packages.is_empty() {
        text.push_str(&format!(" (apt-get install {})", packages.join(" ")));
    }
    text
}

fn tail_message(tail: &str) -> String {
    if tail.is_empty() { String::new() } else { format!("; last output:\n{tail}") }
}

/// How a command is shown in errors: the program and its arguments.
pub fn shown(cmd: &Command) -> String {
    let mut parts = vec![cmd.get_program().to_string_lossy().into_owned()];
    parts.extend(cmd.get_args().map(|a| a.to_string_lossy().into_owned()));
    parts.join(" ")
}

/// The error for a program that could not be started: [`ExecError::Missing`]
/// (with its package) when it is not installed.
pub fn start_error(program: &OsStr, command: String, source: std::io::Error) -> ExecError {
    if source.kind() == std::io::ErrorKind::NotFound {
        let program = program.to_string_lossy().into_owned();
        let package = package_of(&program);
        return ExecError::Missing(vec![Missing { program, package }]);
    }
    ExecError::Start { command, source }
}

/// Checks the result of running `program` (shown as `command`): it started
/// and exited 0. Returns its output.
pub fn check(
    program: &OsStr,
    command: String,
    result: std::io::Result<Output>,
) -> Result<Output, ExecError> {
    let out = result.map_err(|source| start_error(program, command.clone(), source))?;
    if out.status.success() {
        return Ok(out);
    }
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    let tail: Vec<&str> = text.lines().rev().take(30).collect();
    let tail = tail.into_iter().rev().collect::<Vec<_>>().join("\n");
    Err(ExecError::Failed { command, status: out.status, tail })
}

/// Runs `cmd` to completion with its output captured; it must exit 0.
pub fn output(cmd: &mut Command) -> Result<Output, ExecError> {
    let command = shown(cmd);
    let result = cmd.output();
    check(cmd.get_program(), command, result)
}

/// [`output`], for commands whose output is not needed.
pub fn run(cmd: &mut Command) -> Result<(), ExecError> {
    output(cmd).map(drop)
}

/// [`output`] with a deadline: a program still running `timeout` after it
/// started is killed (SIGKILL) and the call is [`ExecError::TimedOut`].
pub fn output_within(cmd: &mut Command, timeout: Duration) -> Result<Output, ExecError> {
    let command = shown(cmd);
    let program = cmd.get_program().to_owned();
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| start_error(&program, command.clone(), e))?;
    let result = wait_within(&mut child, timeout);
    match result {
        Ok(Some(output)) => check(&program, command, Ok(output)),
        Ok(None) => Err(ExecError::TimedOut { command, after: timeout }),
        Err(source) => Err(ExecError::Start { command, source }),
    }
}

/// [`output_within`], for commands whose output is not needed.
pub fn run_within(cmd: &mut Command, timeout: Duration) -> Result<(), ExecError> {
    output_within(cmd, timeout).map(drop)
}

/// Waits for `child` (its stdout/stderr piped) and collects its output;
/// `None` when it was still running at `timeout` (it is killed and reaped).
/// The pipes are drained on threads so a chatty program cannot block on a
/// full pipe while we wait.
pub fn wait_within(
    child: &mut std::process::Child,
    timeout: Duration,
) -> std::io::Result<Option<Output>> {
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes);
            }
            bytes
        })
    };
    let stdout = drain(child.stdout.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let stderr = drain(child.stderr.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let deadline = Instant::now() + timeout;
    // Most calls end in a few ms: poll often at first, then less.
    let mut pause = Duration::from_micros(200);
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break Some(status);
        }
        let now = Instant::now();
        if now >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        // This whole call blocks, like `Command::output`: on a runtime it
        // belongs in `spawn_blocking`.
        #[allow(clippy::disallowed_methods)]
        std::thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(Duration::from_millis(20));
    };
    // A killed program's pipes close with it (unless it left children
    // holding them: then its output is not waited for).
    let Some(status) = status else { return Ok(None) };
    let stdout = stdout.join().unwrap_or_default();
    let stderr = stderr.join().unwrap_or_default();
    Ok(Some(Output { status, stdout, stderr }))
}

/// Runs `cmd` with inherited stdio; it must exit 0.
pub fn status(cmd: &mut Command) -> Result<(), ExecError> {
    let command = shown(cmd);
    let status = cmd.status().map_err(|e| start_error(cmd.get_program(), command.clone(), e))?;
    if status.success() {
        return Ok(());
    }
    Err(ExecError::Failed { command, status, tail: String::new() })
}

/// `program` on `PATH` (or itself, when it is a path that exists).
pub fn find(program: &str) -> Option<PathBuf> {
    if program.contains('/') {
        let path = PathBuf::from(program);
        return path.exists().then_some(path);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(program)).find(|p| is_executable(p))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Every program in `programs` is on `PATH` (an entry starting with `/` is
/// a file that must exist); else one error naming each missing one and its
/// package.
pub fn require(programs: &[&str]) -> Result<(), ExecError> {
    let missing: Vec<Missing> = programs
        .iter()
        .filter(|p| find(p).is_none())
        .map(|p| Missing { program: (*p).to_owned(), package: package_of(p) })
        .collect();
    if missing.is_empty() { Ok(()) } else { Err(ExecError::Missing(missing)) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_program_names_its_package() {
        let mut cmd = Command::new("debootstrap-not-installed-here");
        let e = run(cmd.arg("--help")).unwrap_err();
        assert!(matches!(&e, ExecError::Missing(m) if m[0].package.is_none()), "{e:?}");
        assert!(e.to_string().contains("`debootstrap-not-installed-here` not found"), "{e}");

        let e = start_error(
            OsStr::new("/usr/sbin/debootstrap"),
            "debootstrap".into(),
            std::io::Error::from(std::io::ErrorKind::NotFound),
        );
        assert_eq!(
            e.to_string(),
            "`/usr/sbin/debootstrap` not found: install the Debian package debootstrap"
        );
    }

    #[test]
    fn a_failing_program_is_an_error_with_its_last_output() {
        // `ls` of a path that is not there: exits 2 and says why on stderr.
        let e = run(Command::new("ls").arg("/no/such/path/here")).unwrap_err();
        let ExecError::Failed { command, status, tail } = &e else { panic!("{e:?}") };
        assert_eq!(command, "ls /no/such/path/here");
        assert!(!status.success());
        assert!(tail.contains("/no/such/path/here"), "{tail}");
        assert!(e.to_string().starts_with("`ls /no/such/path/here` failed"), "{e}");
        let e = super::status(&mut Command::new("false")).unwrap_err();
        assert!(matches!(e, ExecError::Failed { ref tail, .. } if tail.is_empty()), "{e:?}");
    }

    #[test]
    fn a_program_past_its_deadline_is_killed() {
        let started = Instant::now();
        let e =
            run_within(Command::new("sleep").arg("30"), Duration::from_millis(200)).unwrap_err();
        assert!(matches!(e, ExecError::TimedOut { .. }), "{e:?}");
        assert!(e.to_string().starts_with("`sleep 30` did not finish within 200ms"), "{e}");
        assert!(started.elapsed() < Duration::from_secs(20), "it did not wait for sleep");
        let out = output_within(Command::new("echo").arg("hi"), Duration::from_secs(10)).unwrap();
        assert_eq!(out.stdout, b"hi\n");
        let e = run_within(Command::new("ls").arg("/no/such/path/x"), Duration::from_secs(10))
            .unwrap_err();
        assert!(matches!(e, ExecError::Failed { ref tail, .. } if tail.contains("/no/such")));
        let e = run_within(&mut Command::new("no-such-program-x"), Duration::from_secs(1));
        assert!(matches!(e, Err(ExecError::Missing(_))), "{e:?}");
    }

    #[test]
    fn a_successful_program_gives_its_output() {
        let out = output(Command::new("echo").arg("hello")).unwrap();
        assert_eq!(out.stdout, b"hello\n");
        status(&mut Command::new("true")).unwrap();
    }

    #[test]
    fn require_names_every_missing_program_and_file_with_packages() {
        require(&["ls", "/"]).unwrap();
        let e = require(&["ls", "flex-missing-x", "/usr/include/libelf-missing.h"]).unwrap_err();
        let ExecError::Missing(missing) = &e else { panic!("{e:?}") };
        assert_eq!(missing.len(), 2, "ls is there");
        let text = e.to_string();
        assert!(text.contains("`flex-missing-x` not found (not installed"), "{text}");
        assert!(text.contains("`/usr/include/libelf-missing.h` not found"), "{text}");
    }

    #[test]
    fn packages_are_known_for_names_paths_and_file_probes() {
        assert_eq!(package_of("mkfs.ext4"), Some("e2fsprogs"));
        assert_eq!(package_of("/usr/sbin/nft"), Some("nftables"));
        assert_eq!(package_of("/usr/include/libelf.h"), Some("libelf-dev"));
        assert_eq!(package_of("hangar-standin-runner"), None);
        let missing = [
            Missing { program: "flex".into(), package: Some("flex") },
            Missing { program: "bison".into(), package: Some("bison") },
        ];
        assert_eq!(
            missing_message(&missing),
            "`flex` not found: install the Debian package flex; `bison` not found: install the \
             Debian package bison (apt-get install flex bison)"
        );
    }

    #[test]
    fn find_searches_path_and_takes_paths_as_they_are() {
        let ls = find("ls").expect("ls is on PATH");
        assert!(ls.is_absolute() && ls.ends_with("ls"));
        assert_eq!(find(ls.to_str().unwrap()), Some(ls));
        assert_eq!(find("no-such-program-anywhere"), None);
        assert_eq!(find("/no/such/program"), None);
    }
}
