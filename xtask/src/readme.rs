//! The README's commands, run as a new user would type them (a step of
//! `cargo xtask test`, and `cargo xtask readme` alone): every `cargo run`
//! line of its ```` ```sh ```` blocks.
//!
//! - `… -- serve` runs on the embedded defaults (127.0.0.1:8080), with
//!   `HOME` and the XDG directories in a throw-away directory so the user's
//!   data is not touched: it must print `hangar listening on http://`,
//!   answer `/healthz`, and exit 0 on SIGTERM.
//! - `… -- demo …` must exit 0.
//!
//! Any other `cargo run` line is an error until this file learns to check
//! it. The lines run without a shell: each is split on whitespace, and
//! shell syntax in one is an error.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// Where the README's `serve` listens (its embedded default).
const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// A fresh machine builds hangar in release mode first.
const BUILD_AND_START: Duration = Duration::from_secs(40 * 60);

/// The `cargo run` lines in the ```` ```sh ```` blocks of `readme`, as argv.
pub(crate) fn commands(readme: &str) -> Result<Vec<Vec<String>>> {
    let mut in_sh = false;
    let mut found = Vec::new();
    for (number, line) in readme.lines().enumerate() {
        let trimmed = line.trim();
        if let Some(info) = trimmed.strip_prefix("```") {
            in_sh = !in_sh && (info == "sh" || info == "bash" || info == "console");
            continue;
        }
        if !in_sh || !trimmed.starts_with("cargo run") {
            continue;
        }
        if let Some(c) = trimmed.chars().find(|c| "'\"`$|&;<>(){}\\*?#".contains(*c)) {
            bail!(
                "README.md:{}: `{trimmed}` has shell syntax ({c:?}): the README's commands run \
                 without a shell",
                number + 1
            );
        }
        found.push(trimmed.split_whitespace().map(str::to_owned).collect());
    }
    Ok(found)
}

/// The hangar subcommand of a `cargo run … -- SUBCOMMAND …` line.
fn subcommand(argv: &[String]) -> Option<&str> {
    let dashes = argv.iter().position(|a| a == "--")?;
    argv.get(dashes + 1).map(String::as_str)
}

/// Runs every `cargo run` line of the README (see the module doc).
pub(crate) fn run(root: &Path) -> Result<()> {
    let readme = std::fs::read_to_string(root.join("README.md")).context("reading README.md")?;
    let commands = commands(&readme)?;
    if !commands.iter().any(|c| subcommand(c) == Some("serve")) {
        bail!("README.md has no `cargo run … -- serve` line in a ```sh block");
    }
    for argv in &commands {
        let home = Home::new()?;
        match subcommand(argv) {
            Some("serve") => serve(root, argv, &home)?,
            Some("demo") => crate::run(&mut home.command(root, argv))
                .with_context(|| format!("the README's `{}`", argv.join(" ")))?,
            _ => bail!("README.md: `{}`: not checked by `cargo xtask readme`", argv.join(" ")),
        }
    }
    eprintln!("xtask: the README's {} `cargo run` command(s) work", commands.len());
    Ok(())
}

/// A throw-away `HOME` (and XDG directories) for one command.
struct Home {
    dir: PathBuf,
}

impl Home {
    fn new() -> Result<Home> {
        let dir = std::env::temp_dir().join(format!("hangar-readme-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Home { dir })
    }

    /// `argv` as typed, in `root`, with `HOME` and the XDG directories in
    /// this home. Cargo and rustup keep their own homes (they are found
    /// from `HOME` otherwise), and no `HANGAR_*` variable of this process
    /// leaks in: a new user has none.
    fn command(&self, root: &Path, argv: &[String]) -> Command {
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..]).current_dir(root);
        let user_home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_default();
        for (var, default) in [("CARGO_HOME", ".cargo"), ("RUSTUP_HOME", ".rustup")] {
            let value =
                std::env::var_os(var).map_or_else(|| user_home.join(default), PathBuf::from);
            cmd.env(var, value);
        }
        cmd.env("HOME", &self.dir)
            .env("XDG_DATA_HOME", self.dir.join("data"))
            .env("XDG_CACHE_HOME", self.dir.join("cache"))
            .env("XDG_CONFIG_HOME", self.dir.join("config"));
        for (var, _) in std::env::vars_os() {
            if var.to_string_lossy().starts_with("HANGAR_") {
                cmd.env_remove(var);
            }
        }
        cmd
    }
}

impl Drop for Home {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The README's `serve`: listening, healthy, and a clean exit on SIGTERM.
fn serve(root: &Path, argv: &[String], home: &Home) -> Result<()> {
    let shown = argv.join(" ");
    if let Err(e) = TcpListener::bind(DEFAULT_LISTEN) {
        bail!(
            "port {DEFAULT_LISTEN} is taken ({e}): the README's `{shown}` listens there on its \
             defaults; stop what holds it (`ss -ltnp 'sport = :8080'` says what) and run again"
        );
    }
    let mut cmd = home.command(root, argv);
    // Its own process group: the signal reaches hangar whether or not cargo
    // is still its parent.
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    eprintln!("xtask: $ {shown}   (HOME={})", home.dir.display());
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| hangar_exec::start_error(argv[0].as_ref(), shown.clone(), e))?;
    let group = nix::unistd::Pid::from_raw(i32::try_from(child.id()).context("pid")?);
    let stdout = child.stdout.take().context("piped stdout")?;
    let (lines, received) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            println!("{line}");
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    let checked = (|| -> Result<()> {
        let addr = listening(&mut child, &received)?;
        healthz(addr)?;
        if !home.dir.join("data/hangar").is_dir() {
            bail!("hangar did not put its data under $XDG_DATA_HOME/hangar");
        }
        Ok(())
    })();
    if let Err(e) = checked {
        let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
        let _ = child.wait();
        return Err(e.context(format!("the README's `{shown}`")));
    }
    nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGTERM).context("SIGTERM")?;
    let status = wait_timeout(&mut child, Duration::from_secs(60))?;
    match status {
        Some(status) if status.success() => {
            eprintln!("xtask: `{shown}` listened, answered /healthz and stopped cleanly");
            Ok(())
        }
        Some(status) => bail!("the README's `{shown}` exited with {status} on SIGTERM"),
        None => {
            let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
            let _ = child.wait();
            bail!("the README's `{shown}` did not stop within 60 s of SIGTERM")
        }
    }
}

/// Waits for `hangar listening on http://ADDR`; the address.
fn listening(
    child: &mut std::process::Child,
    lines: &std::sync::mpsc::Receiver<String>,
) -> Result<SocketAddr> {
    let deadline = Instant::now() + BUILD_AND_START;
    loop {
        match lines.recv_timeout(Duration::from_millis(500)) {
            Ok(line) => {
                if let Some(addr) = line.trim().strip_prefix("hangar listening on http://") {
                    return addr.parse().with_context(|| format!("address in {line:?}"));
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                let status = child.wait()?;
                bail!("exited ({status}) without printing `hangar listening on http://`");
            }
        }
        if let Some(status) = child.try_wait()? {
            bail!("exited ({status}) without printing `hangar listening on http://`");
        }
        if Instant::now() > deadline {
            bail!("no `hangar listening on http://` within {} s", BUILD_AND_START.as_secs());
        }
    }
}

/// `GET /healthz` answers 200.
fn healthz(addr: SocketAddr) -> Result<()> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(10))
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(stream, "GET /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response.lines().next().unwrap_or_default();
    if !status.starts_with("HTTP/1.1 200") {
        bail!("GET /healthz answered {status:?}");
    }
    eprintln!("xtask: GET http://{addr}/healthz: {status}");
    Ok(())
}

fn wait_timeout(child: &mut std::process::Child, limit: Duration) -> Result<Option<ExitStatus>> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        std::thread::park_timeout(Duration::from_millis(100));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_readme_has_the_serve_and_demo_commands() {
        let commands = commands(include_str!("../../README.md")).unwrap();
        let shown: Vec<String> = commands.iter().map(|c| c.join(" ")).collect();
        assert!(shown.contains(&"cargo run --release -p hangar -- serve".to_owned()), "{shown:?}");
        assert!(shown.iter().any(|c| c.ends_with("-- demo --jobs 20")), "{shown:?}");
        for c in &commands {
            assert!(matches!(subcommand(c), Some("serve" | "demo")), "unchecked: {c:?}");
        }
    }

    #[test]
    fn only_cargo_run_lines_in_sh_blocks_are_taken() {
        let readme = "\
cargo run -- outside-a-block
```sh
# a comment
cargo run --release -p hangar -- serve
hangar serve --config x
```

```toml
cargo run -- in-toml
```
```sh
  cargo run -p hangar -- demo --jobs 2
```
";
        let commands = commands(readme).unwrap();
        assert_eq!(
            commands,
            [
                vec!["cargo", "run", "--release", "-p", "hangar", "--", "serve"],
                vec!["cargo", "run", "-p", "hangar", "--", "demo", "--jobs", "2"],
            ]
        );
        assert_eq!(subcommand(&commands[0]), Some("serve"));
        assert_eq!(subcommand(&["cargo".into(), "run".into()]), None);
    }

    #[test]
    fn shell_syntax_in_a_command_is_an_error() {
        let e = commands("```sh\ncargo run -- serve | tee log\n```\n").unwrap_err();
        assert!(e.to_string().contains("README.md:2") && e.to_string().contains("'|'"), "{e}");
    }
}
