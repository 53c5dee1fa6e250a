//! A real S3-compatible server for the blob store and the cache: moto's
//! standalone server (`moto[server]` from PyPI), installed with pip into a
//! virtualenv under `<cache_dir>/s3/<version>/`, started on 127.0.0.1 on a
//! free port and stopped when the tests end. One bucket is created for the
//! tests; each test writes under its own prefix.
//!
//! Exported: `TEST_S3_ENDPOINT`, `TEST_S3_BUCKET`, and the `AWS_*` variables
//! `object_store` reads (endpoint, dummy credentials, region, plain HTTP).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::TestEnv;

const MOTO: &str = "moto[server]==5.2.5";
const BUCKET: &str = "hangar-test";

pub(crate) fn prepare(_root: &Path, env: &mut TestEnv) -> Result<()> {
    let venv = super::cache_dir().join("s3").join("moto-5.2.5");
    let bin = venv.join("bin").join("moto_server");
    if !venv.join(".hangar-installed").exists() {
        if !super::packages::probe_exists("python3") {
            eprintln!("xtask: WARNING: python3 is not installed: the S3 tests will skip");
            return Ok(());
        }
        let _ = std::fs::remove_dir_all(&venv);
        crate::run(Command::new("python3").arg("-m").arg("venv").arg(&venv))
            .context("creating the moto virtualenv")?;
        crate::run(Command::new(venv.join("bin").join("pip")).args([
            "install",
            "--quiet",
            "--disable-pip-version-check",
            MOTO,
        ]))
        .context("installing moto")?;
        std::fs::write(venv.join(".hangar-installed"), b"")?;
    }
    let server = Server::start(&bin)?;
    let endpoint = format!("http://127.0.0.1:{}", server.port);
    for (k, v) in [
        ("TEST_S3_ENDPOINT", endpoint.as_str()),
        ("TEST_S3_BUCKET", BUCKET),
        ("AWS_ENDPOINT", endpoint.as_str()),
        ("AWS_ACCESS_KEY_ID", "hangar-test"),
        ("AWS_SECRET_ACCESS_KEY", "hangar-test"),
        ("AWS_REGION", "us-east-1"),
        ("AWS_ALLOW_HTTP", "true"),
    ] {
        env.server_vars.push((k.into(), v.into()));
    }
    env.guards.push(Box::new(server));
    Ok(())
}

struct Server {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Server {
    fn start(bin: &Path) -> Result<Server> {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let log = std::env::temp_dir().join(format!("hangar-test-s3-{}.log", std::process::id()));
        let child = Command::new(bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .context("starting moto_server")?;
        let server = Server { child, port, log };
        server.wait_ready()?;
        server.request(&format!("PUT /{BUCKET} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"))?;
        eprintln!(
            "xtask: S3-compatible server (moto) is up at 127.0.0.1:{} with bucket {BUCKET}",
            server.port
        );
        Ok(server)
    }

    fn wait_ready(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return Ok(());
            }
            std::thread::park_timeout(Duration::from_millis(100));
        }
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        bail!("moto_server did not start within 60 s; its log:\n{log}")
    }

    /// One raw HTTP request (moto does not check signatures), 2xx expected.
    fn request(&self, request: &str) -> Result<()> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port))?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        stream.write_all(request.as_bytes())?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        if !response.starts_with("HTTP/1.1 2") && !response.starts_with("HTTP/1.0 2") {
            bail!("moto answered {:?}", response.lines().next().unwrap_or_default());
        }
        Ok(())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}
