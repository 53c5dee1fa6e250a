//! The stand-in runner: decodes a JIT config the way actions/runner does
//! (base64 JSON map of file name → base64 file content; `.runner` holds the
//! server URL, `.credentials` the runner's token) and runs the
//! simulator's runner protocol (see `hangar-simulator`'s `runner_proto`):
//! connect, long-poll for a job, renew it while "working" for the requested
//! time, report completion, exit.
//!
//! A library as well as a binary so the fake provider can run runners
//! in-process; the binary (a plain glibc-linked executable, rustls, no
//! OpenSSL) is what the process and microVM providers start.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde::Deserialize;
use serde_json::json;

/// Why the runner gave up.
#[derive(Debug, thiserror::Error)]
pub enum StandinError {
    #[error("the JIT config is not valid base64 JSON")]
    Encoding,
    #[error("the JIT config has no usable {file} file")]
    MissingFile { file: &'static str },
    #[error("{file} in the JIT config is not the expected JSON")]
    BadFile {
        file: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("the server at {url} stayed unreachable for {seconds}s")]
    Unreachable {
        url: String,
        seconds: u64,
        #[source]
        source: reqwest::Error,
    },
    #[error("the server answered {status} to {call}")]
    Protocol { call: &'static str, status: u16 },
    #[error("cannot write the runner files into {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The parts of `.runner` the stand-in uses (actions/runner's
/// `RunnerSettings` field names).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RunnerSettings {
    pub agent_id: String,
    pub agent_name: String,
    pub server_url: String,
    #[serde(default)]
    pub work_folder: Option<String>,
    #[serde(default)]
    pub ephemeral: bool,
}

#[derive(Deserialize)]
struct Credentials {
    #[serde(rename = "Data")]
    data: CredentialData,
}

#[derive(Deserialize)]
struct CredentialData {
    token: String,
}

/// A decoded JIT config.
#[derive(Clone)]
pub struct Decoded {
    pub settings: RunnerSettings,
    token: String,
    /// The raw files, for writing them into the runner root.
    files: Vec<(String, Vec<u8>)>,
}

impl fmt::Debug for Decoded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Decoded").field("settings", &self.settings).finish_non_exhaustive()
    }
}

/// Decodes an `encoded_jit_config`.
pub fn decode(encoded: &str) -> Result<Decoded, StandinError> {
    let outer = B64.decode(encoded.trim()).map_err(|_| StandinError::Encoding)?;
    let map: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&outer).map_err(|_| StandinError::Encoding)?;
    let mut files = Vec::new();
    for (name, value) in &map {
        let content =
            value.as_str().and_then(|s| B64.decode(s).ok()).ok_or(StandinError::Encoding)?;
        files.push((name.clone(), content));
    }
    let file = |name: &'static str| {
        files
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, c)| c.as_slice())
            .ok_or(StandinError::MissingFile { file: name })
    };
    let settings: RunnerSettings = serde_json::from_slice(file(".runner")?)
        .map_err(|source| StandinError::BadFile { file: ".runner", source })?;
    let credentials: Credentials = serde_json::from_slice(file(".credentials")?)
        .map_err(|source| StandinError::BadFile { file: ".credentials", source })?;
    Ok(Decoded { settings, token: credentials.data.token, files })
}

/// How the run ended (both are a normal exit, status 0).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Ran `job_id` and reported `conclusion`.
    Completed { job_id: i64, conclusion: String },
    /// The registration was deleted (before or during the job).
    RegistrationGone,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Completed { job_id, conclusion } => {
                write!(f, "job {job_id} completed: {conclusion}")
            }
            Outcome::RegistrationGone => {
                f.write_str("the runner no longer exists on the server; exiting")
            }
        }
    }
}

/// Knobs, with defaults for real use.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Long-poll length asked of the server.
    pub poll_wait: Duration,
    /// How often a running job is renewed.
    pub renew_every: Duration,
    /// Give up after the server has been unreachable this long.
    pub unreachable_for: Duration,
    /// Write the config files here while running, remove them on exit.
    pub root: Option<PathBuf>,
}

impl Default for RunOptions {
    fn default() -> RunOptions {
        RunOptions {
            poll_wait: Duration::from_secs(10),
            renew_every: Duration::from_secs(1),
            unreachable_for: Duration::from_secs(60),
            root: None,
        }
    }
}

/// Runs one job (or none, if the registration disappears) and returns.
pub async fn run(encoded: &str, options: &RunOptions) -> Result<Outcome, StandinError> {
    let decoded = decode(encoded)?;
    if let Some(root) = &options.root {
        for (name, content) in &decoded.files {
            let path = root.join(name);
            std::fs::write(&path, content)
                .map_err(|source| StandinError::Write { path, source })?;
        }
    }
    let outcome = Session::new(&decoded, options).run().await;
    if let Some(root) = &options.root {
        // An ephemeral runner deletes its local configuration when it is done.
        for (name, _) in &decoded.files {
            let _ = std::fs::remove_file(root.join(name));
        }
    }
    outcome
}

struct Session<'a> {
    http: reqwest::Client,
    base: String,
    token: &'a str,
    options: &'a RunOptions,
}

enum Reply {
    Ok(reqwest::Response),
    NoContent,
    Gone,
}

impl<'a> Session<'a> {
    fn new(decoded: &'a Decoded, options: &'a RunOptions) -> Session<'a> {
        let base = format!("{}/_runner", decoded.settings.server_url.trim_end_matches('/'));
        Session {
            http: reqwest::Client::builder()
                .timeout(options.poll_wait + Duration::from_secs(10))
                // It speaks plain HTTP to the simulator. Built with the
                // workspace's features, reqwest would otherwise read the
                // system's root certificates at every start (object_store
                // asks for native roots): ~7 ms of each runner's life,
                // 1.5 s of a 200-job burst.
                .tls_built_in_root_certs(false)
                .build()
                .expect("a plain HTTP client builds"),
            base,
            token: &decoded.token,
            options,
        }
    }

    /// One call, retried while the server is unreachable or answers 5xx.
    async fn call(
        &self,
        call: &'static str,
        request: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<Reply, StandinError> {
        let started = tokio::time::Instant::now();
        let mut backoff = Duration::from_millis(100);
        loop {
            match request().bearer_auth(self.token).send().await {
                Ok(response) => match response.status().as_u16() {
                    200 => return Ok(Reply::Ok(response)),
                    204 => return Ok(Reply::NoContent),
                    404 => return Ok(Reply::Gone),
                    status if status < 500 => return Err(StandinError::Protocol { call, status }),
                    _ => {}
                },
                Err(source) if started.elapsed() >= self.options.unreachable_for => {
                    return Err(StandinError::Unreachable {
                        url: self.base.clone(),
                        seconds: self.options.unreachable_for.as_secs(),
                        source,
                    });
                }
                Err(_) => {}
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }

    async fn run(&self) -> Result<Outcome, StandinError> {
        let url = format!("{}/connect", self.base);
        if let Reply::Gone = self.call("connect", || self.http.post(&url)).await? {
            return Ok(Outcome::RegistrationGone);
        }
        let wait_ms = self.options.poll_wait.as_millis();
        let url = format!("{}/message?wait_ms={wait_ms}", self.base);
        let job = loop {
            match self.call("message", || self.http.get(&url)).await? {
                Reply::Gone => return Ok(Outcome::RegistrationGone),
                Reply::NoContent => {}
                Reply::Ok(response) => {
                    let job: JobMessage = response
                        .json()
                        .await
                        .map_err(|_| StandinError::Protocol { call: "message", status: 200 })?;
                    break job;
                }
            }
        };
        // "Run" the job: wait for its duration, renewing the lease.
        let deadline = tokio::time::Instant::now() + Duration::from_millis(job.duration_ms);
        let renew = format!("{}/jobs/{}/renew", self.base, job.job_id);
        loop {
            let now = tokio::time::Instant::now();
            if now >= deadline {
                break;
            }
            tokio::time::sleep((deadline - now).min(self.options.renew_every)).await;
            if tokio::time::Instant::now() < deadline
                && let Reply::Gone = self.call("renew", || self.http.post(&renew)).await?
            {
                return Ok(Outcome::RegistrationGone);
            }
        }
        let url = format!("{}/jobs/{}/complete", self.base, job.job_id);
        let body = json!({ "conclusion": job.conclusion });
        match self.call("complete", || self.http.post(&url).json(&body)).await? {
            Reply::Gone => Ok(Outcome::RegistrationGone),
            _ => Ok(Outcome::Completed { job_id: job.job_id, conclusion: job.conclusion }),
        }
    }
}

#[derive(Debug, Deserialize)]
struct JobMessage {
    job_id: i64,
    duration_ms: u64,
    conclusion: String,
}

/// The path of the `hangar-standin-runner` binary for tests in any crate:
/// `$HANGAR_STANDIN_RUNNER` if set, else next to the running test binary
/// (`target/<profile>/`), building it with `$CARGO` if it is not there yet.
pub fn binary_path() -> std::io::Result<PathBuf> {
    if let Some(path) = std::env::var_os("HANGAR_STANDIN_RUNNER") {
        return Ok(PathBuf::from(path));
    }
    let exe = std::env::current_exe()?;
    let mut dir = exe.parent().map(PathBuf::from).unwrap_or_default();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let candidate = dir.join("hangar-standin-runner");
    if candidate.exists() {
        return Ok(candidate);
    }
    // The profile whose directory the test binary runs from (`debug` is `dev`).
    let profile = match dir.file_name().and_then(|name| name.to_str()) {
        Some("debug") | None => "dev",
        Some(other) => other,
    };
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = std::process::Command::new(cargo)
        .args(["build", "--profile", profile, "-p", "hangar-standin-runner"])
        .args(["--bin", "hangar-standin-runner"])
        .status()?;
    if status.success() && candidate.exists() {
        Ok(candidate)
    } else {
        Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!(
                "{} is missing and `cargo build --profile {profile} -p hangar-standin-runner` \
                 did not produce it",
                candidate.display()
            ),
        ))
    }
}
