//! A throw-away PostgreSQL server for the store's Postgres half.
//!
//! Debian's server binaries live under `/usr/lib/postgresql/<major>/bin`.
//! PostgreSQL refuses to run as root, so as root the cluster belongs to the
//! `postgres` user the package creates. The cluster lives in a temporary
//! directory, listens on 127.0.0.1 on a free port, trusts local connections,
//! runs with `fsync=off` (the data is thrown away), and is stopped when the
//! tests end. `TEST_POSTGRES_URL` points the tests at it; each test creates
//! its own database there.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::TestEnv;

pub(crate) fn prepare(_root: &Path, env: &mut TestEnv) -> Result<()> {
    if let Ok(url) = std::env::var("TEST_POSTGRES_URL") {
        eprintln!("xtask: using the PostgreSQL server at TEST_POSTGRES_URL");
        env.vars.push(("TEST_POSTGRES_URL".into(), url));
        return Ok(());
    }
    let Some(bin) = find_bin_dir() else {
        eprintln!(
            "xtask: WARNING: PostgreSQL is not installed: the Postgres store tests will skip"
        );
        return Ok(());
    };
    let server = Server::start(&bin)?;
    env.server_vars.push(("TEST_POSTGRES_URL".into(), server.url()));
    env.guards.push(Box::new(server));
    Ok(())
}

fn find_bin_dir() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|entry| entry.ok().map(|e| e.path().join("bin")))
        .filter(|bin| bin.join("initdb").exists())
        .collect();
    dirs.sort();
    dirs.pop()
}

struct Server {
    child: Child,
    dir: PathBuf,
    port: u16,
}

impl Server {
    fn start(bin: &Path) -> Result<Server> {
        let dir = std::env::temp_dir().join(format!("hangar-test-pg-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let as_root = is_root();
        if as_root {
            crate::run(Command::new("chown").arg("postgres:postgres").arg(&dir))?;
        }
        let data = dir.join("data");
        let mut initdb = user_command(as_root, &bin.join("initdb"));
        initdb.args(["--auth=trust", "--username=postgres", "--encoding=UTF8", "--no-sync", "-D"]);
        initdb.arg(&data).stdout(Stdio::null());
        crate::run(&mut initdb).context("initdb")?;
        let port = free_port()?;
        let mut postgres = user_command(as_root, &bin.join("postgres"));
        postgres
            .arg("-D")
            .arg(&data)
            .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"])
            .args(["-c", "synchronous_commit=off", "-c", "full_page_writes=off"])
            .args(["-c", "max_connections=300"])
            .arg("-c")
            .arg(format!("unix_socket_directories={}", dir.display()))
            .arg("-p")
            .arg(port.to_string())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("server.log"))?);
        let child = postgres.spawn().context("starting postgres")?;
        let server = Server { child, dir, port };
        server.wait_ready()?;
        eprintln!("xtask: PostgreSQL is up at {}", server.url());
        Ok(server)
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn wait_ready(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return Ok(());
            }
            std::thread::park_timeout(Duration::from_millis(100));
        }
        let log = std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default();
        bail!("postgres did not start within 30 s; its log:\n{log}")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn user_command(as_root: bool, program: &Path) -> Command {
    if as_root {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", "postgres", "--"]).arg(program);
        cmd
    } else {
        Command::new(program)
    }
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn is_root() -> bool {
    super::packages::is_root()
}
