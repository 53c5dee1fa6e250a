//! `cargo xtask bench-cache`: the cache server's benchmark (issue 5).
//!
//! Builds `hangar` in release mode, starts `hangar serve` on 127.0.0.1 with
//! the cache on local disk, and drives the real `@actions/cache` 6.3.0 client
//! (protocol v2) through `crates/cache/tests/node/client.mjs`: for 150 MiB
//! and 1 GiB incompressible files, each save and each restore in its own
//! node process with a fresh key, workspace and `RUNNER_TEMP`, timed inside
//! the process around the `saveCache`/`restoreCache` call (the client's own
//! number, without node's start-up). Every restore is checked byte for byte.
//! Then the client's own tar+zstd commands alone on the same files, the
//! server's share (client time − tar/zstd time) as MB/s (10^6 B) of archive,
//! the server's CPU time (user + system, from `/proc/PID/stat`) per GiB of
//! archive, which load on a shared machine distorts far less than wall time,
//! and the server's peak RSS (`VmHWM`). The client's CPU time (node and
//! the tar/zstd it runs, from `getrusage(RUSAGE_CHILDREN)`) is printed
//! next to that of tar/zstd alone: client, tar/zstd and server share the
//! machine's cores, so on a small machine their sum bounds the wall time
//! whatever the server does. Prints a Markdown table.
//!
//! The server runs with token verification off (the benchmark measures the
//! data path, not JWKS fetching); its start-up warning says so.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

const MIB: u64 = 1024 * 1024;

pub(crate) fn run(root: &Path, runs: usize) -> Result<()> {
    let mut env = crate::prepare::TestEnv::default();
    crate::prepare::npm_only(root, &mut env)?;
    let modules = env
        .vars
        .iter()
        .find(|(k, _)| k == "TEST_NODE_MODULES")
        .map(|(_, v)| v.clone())
        .context("npm clients could not be prepared")?;
    // HANGAR_BENCH_BIN: an already built `hangar` to measure instead (for
    // A/B runs of two builds back to back).
    let hangar = match std::env::var_os("HANGAR_BENCH_BIN") {
        Some(bin) => PathBuf::from(bin),
        None => crate::release_hangar(root)?,
    };

    let work = tempfile_dir("hangar-bench-cache")?;
    let data = work.join("data");
    std::fs::create_dir_all(&data)?;
    let config = work.join("hangar.toml");
    std::fs::write(&config, "[cache]\ninsecure_skip_token_verification = true\n")?;
    let server = Server::start(&hangar, &config, &data)?;
    let token = dev_token();

    println!(
        "| size | op | client s (min / med / max) | tar+zstd alone s (med) | server share s | server share MB/s | server CPU s/GiB (med) | client CPU s (med) | tar+zstd CPU s (med) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let mut peak_after = Vec::new();
    for (label, size) in [("150 MiB", 150 * MIB), ("1 GiB", 1024 * MIB)] {
        let src = work.join(format!("src-{size}"));
        std::fs::create_dir_all(&src)?;
        let file = src.join("payload.bin");
        write_random(&file, size)?;
        sync();
        let archive_size = tar_create(&src, &work.join("probe.tzst"))?.1;

        let (mut save, mut restore) = (Samples::default(), Samples::default());
        for run in 0..runs {
            let key = format!("bench-{size}-{run}-{}", std::process::id());
            let ws = work.join(format!("ws-{size}-{run}"));
            std::fs::create_dir_all(&ws)?;
            std::fs::hard_link(&file, ws.join("payload.bin"))
                .or_else(|_| std::fs::copy(&file, ws.join("payload.bin")).map(drop))?;
            sync();
            let ticks0 = server.cpu_ticks()?;
            let ((ms, id), cpu) =
                with_cpu(|| client(&modules, &server.url, &ws, &work, &token, "save", &key))?;
            save.server_ticks.push(server.cpu_ticks()? - ticks0);
            save.client_cpu_s.push(cpu);
            if id.as_i64().unwrap_or(-1) <= 0 {
                bail!("save of {label} failed: {id}");
            }
            save.client_s.push(ms / 1000.0);
            std::fs::remove_dir_all(&ws)?;
            std::fs::create_dir_all(&ws)?;
            sync();
            let ticks0 = server.cpu_ticks()?;
            let ((ms, matched), cpu) =
                with_cpu(|| client(&modules, &server.url, &ws, &work, &token, "restore", &key))?;
            restore.server_ticks.push(server.cpu_ticks()? - ticks0);
            restore.client_cpu_s.push(cpu);
            if matched.as_str() != Some(key.as_str()) {
                bail!("restore of {label} missed: {matched}");
            }
            if !same_file(&file, &ws.join("payload.bin"))? {
                bail!("restore of {label}: the restored file differs");
            }
            restore.client_s.push(ms / 1000.0);
            std::fs::remove_dir_all(&ws)?;
        }
        for _ in 0..runs {
            let archive = work.join("alone.tzst");
            let (secs, cpu) = with_cpu(|| Ok(tar_create(&src, &archive)?.0))?;
            save.alone_s.push(secs);
            save.alone_cpu_s.push(cpu);
            let out = work.join("extract");
            let _ = std::fs::remove_dir_all(&out);
            std::fs::create_dir_all(&out)?;
            let (secs, cpu) = with_cpu(|| tar_extract(&archive, &out))?;
            restore.alone_s.push(secs);
            restore.alone_cpu_s.push(cpu);
            std::fs::remove_dir_all(&out)?;
            std::fs::remove_file(&archive)?;
        }
        for (op, samples) in [("save", &mut save), ("restore", &mut restore)] {
            let (lo, med, hi) = stats(&mut samples.client_s);
            let alone_med = stats(&mut samples.alone_s).1;
            let share = med - alone_med;
            #[allow(clippy::cast_precision_loss)]
            let mbps = if share > 0.0 { archive_size as f64 / share / 1e6 } else { f64::INFINITY };
            let mut cpu_s: Vec<f64> =
                samples.server_ticks.iter().map(|t| *t as f64 / clock_ticks()).collect();
            #[allow(clippy::cast_precision_loss)]
            let cpu_per_gib = stats(&mut cpu_s).1 / (archive_size as f64 / (1u64 << 30) as f64);
            let client_cpu = stats(&mut samples.client_cpu_s).1;
            let alone_cpu = stats(&mut samples.alone_cpu_s).1;
            println!(
                "| {label} | {op} | {lo:.2} / **{med:.2}** / {hi:.2} | {alone_med:.2} | {share:.2} | {mbps:.0} | {cpu_per_gib:.2} | {client_cpu:.2} | {alone_cpu:.2} |"
            );
        }
        peak_after.push((label, server.peak_rss_kib()?));
        std::fs::remove_dir_all(&src)?;
    }
    for (label, kib) in peak_after {
        println!(
            "\nserver peak RSS (VmHWM) after the {label} runs: {:.1} MB",
            kib as f64 * 1024.0 / 1e6
        );
    }
    drop(server);
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}

/// One operation's measurements (save or restore), one entry per run.
#[derive(Default)]
struct Samples {
    /// The client's own time for the call, in seconds.
    client_s: Vec<f64>,
    /// The client's tar/zstd command alone, in seconds.
    alone_s: Vec<f64>,
    /// The server's CPU time during the call, in clock ticks.
    server_ticks: Vec<u64>,
    /// CPU seconds of the client process and what it ran.
    client_cpu_s: Vec<f64>,
    /// CPU seconds of tar/zstd alone.
    alone_cpu_s: Vec<f64>,
}

/// Runs `f` (which waits for the child processes it starts) and returns its
/// result with the CPU seconds those children used.
fn with_cpu<T>(f: impl FnOnce() -> Result<T>) -> Result<(T, f64)> {
    let before = children_cpu_s()?;
    let value = f()?;
    Ok((value, children_cpu_s()? - before))
}

fn tempfile_dir(name: &str) -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// An unsigned-in-effect token the server accepts with verification off.
fn dev_token() -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let claims = URL_SAFE_NO_PAD.encode(
        br#"{"repository_id":"1","ac":"[{\"Scope\":\"refs/heads/main\",\"Permission\":3}]","exp":4102444800,"nbf":0}"#,
    );
    format!("{header}.{claims}.{}", URL_SAFE_NO_PAD.encode(b"bench"))
}

fn stats(v: &mut [f64]) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[0], v[v.len() / 2], v[v.len() - 1])
}

/// User + system CPU seconds of this process's waited-for children so far
/// (node, and the tar/zstd it waited for), from `getrusage(RUSAGE_CHILDREN)`.
fn children_cpu_s() -> Result<f64> {
    use nix::sys::resource::{UsageWho, getrusage};
    let usage = getrusage(UsageWho::RUSAGE_CHILDREN)?;
    let secs = |t: nix::sys::time::TimeVal| {
        #[allow(clippy::cast_precision_loss)]
        let s = t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
        s
    };
    Ok(secs(usage.user_time()) + secs(usage.system_time()))
}

/// Clock ticks per second (`getconf CLK_TCK`; 100 on Linux when unknown).
fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

fn sync() {
    let _ = Command::new("sync").status();
}

fn write_random(path: &Path, size: u64) -> Result<()> {
    let mut random = std::fs::File::open("/dev/urandom")?.take(size);
    let mut out = std::fs::File::create(path)?;
    std::io::copy(&mut random, &mut out)?;
    Ok(())
}

fn same_file(a: &Path, b: &Path) -> Result<bool> {
    let status = Command::new("cmp").arg("-s").arg(a).arg(b).status()?;
    Ok(status.success())
}

/// The client's own compression command; returns (seconds, archive bytes).
fn tar_create(dir: &Path, archive: &Path) -> Result<(f64, u64)> {
    let started = Instant::now();
    let status = Command::new("tar")
        .args(["--posix", "-cf"])
        .arg(archive)
        .args(["--use-compress-program", "zstdmt", "-P", "-C"])
        .arg(dir)
        .arg("payload.bin")
        .status()?;
    let secs = started.elapsed().as_secs_f64();
    if !status.success() {
        bail!("tar create failed");
    }
    Ok((secs, std::fs::metadata(archive)?.len()))
}

fn tar_extract(archive: &Path, dir: &Path) -> Result<f64> {
    let started = Instant::now();
    let status = Command::new("tar")
        .arg("-xf")
        .arg(archive)
        .args(["-P", "-C"])
        .arg(dir)
        .args(["--use-compress-program", "unzstd"])
        .status()?;
    if !status.success() {
        bail!("tar extract failed");
    }
    Ok(started.elapsed().as_secs_f64())
}

/// One client call in its own node process; returns (ms, result value).
fn client(
    modules: &str,
    url: &str,
    ws: &Path,
    work: &Path,
    token: &str,
    op: &str,
    key: &str,
) -> Result<(f64, serde_json::Value)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("root");
    let temp = work.join("runner-temp");
    let _ = std::fs::remove_dir_all(&temp);
    std::fs::create_dir_all(&temp)?;
    let mut call = serde_json::json!({
        "op": op, "key": key, "paths": ["payload.bin"], "workspace": ws, "token": token,
    });
    if op == "restore" {
        call["restoreKeys"] = serde_json::json!([]);
    }
    let out = Command::new("node")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", std::env::var("HOME").unwrap_or_default())
        .env("RUNNER_TEMP", &temp)
        .env("ACTIONS_CACHE_SERVICE_V2", "true")
        .env("ACTIONS_RESULTS_URL", format!("{url}/"))
        .arg(root.join("crates/cache/tests/node/client.mjs"))
        .arg(modules)
        .arg("cache6")
        .arg(serde_json::Value::Array(vec![call]).to_string())
        .stderr(Stdio::inherit())
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || stdout.contains("::warning::") {
        bail!("client {op} failed or warned:\n{stdout}");
    }
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("HANGAR_RESULT 0 "))
        .context("no result line")?;
    let result: serde_json::Value = serde_json::from_str(line)?;
    let ms = result["ms"].as_f64().context("no time")?;
    let value = if op == "save" { result["id"].clone() } else { result["key"].clone() };
    Ok((ms, value))
}

struct Server {
    child: Child,
    url: String,
}

impl Server {
    fn start(hangar: &Path, config: &Path, data: &Path) -> Result<Server> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let child = Command::new(hangar)
            .arg("serve")
            .arg("--config")
            .arg(config)
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .args(["--admin-listen", "127.0.0.1:0"])
            .arg("--data-dir")
            .arg(data)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting hangar serve")?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                bail!("hangar serve did not listen within 30 s");
            }
            std::thread::park_timeout(Duration::from_millis(50));
        }
        Ok(Server { child, url: format!("http://127.0.0.1:{port}") })
    }

    /// The server's user + system CPU time so far, in clock ticks
    /// (`/proc/PID/stat` fields 14 and 15): load on the shared machine
    /// stretches wall time but barely this.
    fn cpu_ticks(&self) -> Result<u64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id()))?;
        // Fields after the parenthesised command name, which may hold spaces.
        let rest = stat.rsplit_once(')').context("bad /proc stat")?.1;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let utime: u64 = fields.get(11).context("utime")?.parse()?;
        let stime: u64 = fields.get(12).context("stime")?.parse()?;
        Ok(utime + stime)
    }

    fn peak_rss_kib(&self) -> Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        let line = status.lines().find(|l| l.starts_with("VmHWM:")).context("no VmHWM")?;
        Ok(line.split_whitespace().nth(1).context("VmHWM value")?.parse()?)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
