//! The process provider: each runner is a child process of hangar, in its
//! own work directory `<work_root>/<runner_id>/`.
//!
//! **NOT ISOLATED.** The runner runs as hangar's user, on hangar's host,
//! sharing its network and file system. A workflow can read anything hangar
//! can. Use it for development, demos and tests, never for untrusted code.
//!
//! # How it keeps the provider contract
//! - The JIT config reaches the runner only through the environment
//!   variable `ACTIONS_RUNNER_INPUT_JITCONFIG` (the runner reads any
//!   argument from `ACTIONS_RUNNER_INPUT_<NAME>`), never the command line,
//!   which any local user can read in `/proc`.
//! - **A runner inherits nothing of hangar's environment** but
//!   [`INHERITED`] (the search path, locale and time zone): hangar's own
//!   environment holds its secrets (`HANGAR_WEBHOOK_SECRET`,
//!   `HANGAR_GITHUB_TOKEN`, the App key, `HANGAR_DATABASE_URL`, `AWS_*`),
//!   and a job step that prints its environment would put them in a job
//!   log. The child starts from an empty environment: [`INHERITED`], `HOME`
//!   (its work directory), the pool's `env`, the spec's `env`, then the JIT
//!   config and `HANGAR_RUNNER_ID`, which nothing before them can override.
//! - Work directories are created 0700 and `runner.log` 0600: other local
//!   users cannot read a job's files or output.
//! - **`list` is the truth, even across restarts.** State lives on disk:
//!   the work directory holds `pid` and, once the child ended, `exit_code`.
//!   `list` scans `<work_root>` so it reports runners a previous hangar
//!   process started (orphans after `kill -9`), checking liveness through
//!   `/proc/<pid>/cwd`, which also guards against a reused pid. A child of
//!   this provider value is reported from memory instead: it is `Running`
//!   until its exit status is collected, so the moment between its exit
//!   and the `exit_code` write never shows as an exit with an unknown code
//!   (which the scheduler would take for a crash).
//! - Each child leads its own process group, so destroy kills the runner
//!   and anything it started, and survives hangar being killed (its runner
//!   keeps working; the restarted hangar finds it).
//! - Destroy is idempotent: kill the group if alive, remove the directory.
//!   The task that reaps a child writes `exit_code` through a handle on the
//!   directory opened at launch, so a late write never lands in the
//!   directory of a relaunch of the same runner id; a write that races the
//!   removal makes destroy retry it.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use hangar_provider::{Health, Instance, InstanceState, Provider, ProviderError, RunnerSpec};
use hangar_types::{RunnerId, Timestamp};
use serde::Deserialize;

/// The `[pools.provider.process]` section of a process pool. `Debug` shows
/// the names in `env`, never their values (a proxy URL may hold a password).
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessConfig {
    /// The runner program (`run.sh`, or `hangar-standin-runner`).
    pub command: PathBuf,
    #[serde(default)]
    pub args: Vec<String>,
    /// Where work directories go; default `<data_dir>/runners/<pool>`.
    #[serde(default)]
    pub work_root: Option<PathBuf>,
    /// Extra environment for every runner of the pool. A runner inherits
    /// nothing else from hangar but [`INHERITED`]: name here what it needs
    /// (a proxy, say).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

impl std::fmt::Debug for ProcessConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessConfig")
            .field("command", &self.command)
            .field("args", &self.args)
            .field("work_root", &self.work_root)
            .field("env", &self.env.keys().map(|k| format!("{k}=***")).collect::<Vec<_>>())
            .finish()
    }
}

/// See the module docs. One value per pool.
#[derive(Debug)]
pub struct ProcessProvider {
    config: ProcessConfig,
    work_root: PathBuf,
    /// Children this value launched: the exit code once the child has been
    /// reaped (`None` inside: killed by a signal). Each launch gets a cell
    /// of its own, so a late reap never touches a relaunch.
    children: Mutex<HashMap<RunnerId, ExitCell>>,
}

/// Set once, when the child has been reaped, to its exit code.
type ExitCell = Arc<OnceLock<Option<i32>>>;

/// The variables of hangar's environment a runner inherits (when set):
/// none can hold a secret. Everything else it gets is set explicitly.
pub const INHERITED: &[&str] = &["PATH", "LANG", "LANGUAGE", "LC_ALL", "LC_CTYPE", "TZ"];

/// `PATH` for a runner when hangar has none.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

const PID_FILE: &str = "pid";
const EXIT_FILE: &str = "exit_code";
const LOG_FILE: &str = "runner.log";

impl ProcessProvider {
    pub fn new(config: ProcessConfig, default_work_root: &Path) -> ProcessProvider {
        let work_root = config.work_root.clone().unwrap_or_else(|| default_work_root.to_owned());
        tracing::warn!(
            work_root = %work_root.display(),
            "The process provider runs runners as local child processes: NOT isolated, for development only."
        );
        ProcessProvider { config, work_root, children: Mutex::default() }
    }

    fn children(&self) -> std::sync::MutexGuard<'_, HashMap<RunnerId, ExitCell>> {
        self.children.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn dir(&self, runner_id: &RunnerId) -> PathBuf {
        self.work_root.join(runner_id.as_str())
    }

    async fn instance_read(&self, runner_id: &RunnerId) -> Option<Instance> {
        let dir = self.dir(runner_id);
        let pid = tokio::fs::read_to_string(dir.join(PID_FILE)).await.ok()?;
        let pid: u32 = pid.trim().parse().ok()?;
        let launched_at: Timestamp = tokio::fs::metadata(dir.join(PID_FILE))
            .await
            .ok()
            .and_then(|m| m.modified().ok())
            .map_or_else(chrono::Utc::now, Into::into);
        let child = self.children().get(runner_id).cloned();
        let state = match child {
            Some(exit) => match exit.get() {
                None => InstanceState::Running,
                Some(&code) => InstanceState::Exited { code },
            },
            None => match tokio::fs::read_to_string(dir.join(EXIT_FILE)).await {
                Ok(code) => InstanceState::Exited { code: code.trim().parse().ok() },
                Err(_) if alive(pid, &dir).await => InstanceState::Running,
                Err(_) => InstanceState::Exited { code: None },
            },
        };
        Some(Instance {
            runner_id: runner_id.clone(),
            state,
            launched_at,
            detail: format!("pid {pid} in {}", dir.display()),
        })
    }
}

/// What a runner inherits from hangar's environment: [`INHERITED`], with
/// a default `PATH`.
fn inherited_env() -> Vec<(&'static str, std::ffi::OsString)> {
    let mut env: Vec<_> =
        INHERITED.iter().filter_map(|&name| Some((name, std::env::var_os(name)?))).collect();
    if !env.iter().any(|(name, _)| *name == "PATH") {
        env.push(("PATH", DEFAULT_PATH.into()));
    }
    env
}

/// Creates `dir` and missing parents, readable by hangar's user only
/// (directories that exist are left as they are).
fn private_dir_create(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)
}

/// A runner's work directory, 0700 even when a half-done launch left it.
fn work_dir_create(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    private_dir_create(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

/// Creates (or truncates) `path`, readable by hangar's user only.
fn private_file_create(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    Ok(file)
}

/// Whether `pid` is a live process working in `dir` (not a reused pid).
async fn alive(pid: u32, dir: &Path) -> bool {
    let Ok(cwd) = tokio::fs::read_link(format!("/proc/{pid}/cwd")).await else {
        return false;
    };
    let Ok(stat) = tokio::fs::read_to_string(format!("/proc/{pid}/stat")).await else {
        return false;
    };
    // Field 3 of /proc/PID/stat is the state; `Z` is a zombie: it has exited.
    let zombie = stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'));
    let dir = tokio::fs::canonicalize(dir).await.unwrap_or_else(|_| dir.to_owned());
    !zombie && cwd == dir
}

/// Writes `name` inside the directory `dir` was opened on, wherever that
/// directory is now; fails if it has been removed. (`/proc/self/fd` stands
/// in for `openat`; the provider is Linux-only anyway.)
async fn write_in(dir: &std::fs::File, name: &str, contents: &str) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let path = format!("/proc/self/fd/{}/{name}", dir.as_raw_fd());
    tokio::fs::write(path, contents).await
}

fn launch_error(runner_id: &RunnerId, reason: &str, source: std::io::Error) -> ProviderError {
    ProviderError::Launch {
        runner_id: runner_id.clone(),
        reason: reason.to_owned(),
        source: Some(Box::new(source)),
    }
}

#[async_trait::async_trait]
impl Provider for ProcessProvider {
    fn kind(&self) -> &'static str {
        "process"
    }

    fn isolated(&self) -> bool {
        false
    }

    async fn launch(&self, spec: &RunnerSpec) -> Result<Instance, ProviderError> {
        let id = &spec.runner_id;
        if let Some(existing) = self.instance_read(id).await {
            return Ok(existing);
        }
        let dir = self.dir(id);
        work_dir_create(&dir).map_err(|e| launch_error(id, "creating the work directory", e))?;
        let log = private_file_create(&dir.join(LOG_FILE))
            .map_err(|e| launch_error(id, "creating the runner log", e))?;
        let log_err =
            log.try_clone().map_err(|e| launch_error(id, "creating the runner log", e))?;
        let mut command = tokio::process::Command::new(&self.config.command);
        command
            .args(&self.config.args)
            .current_dir(&dir)
            .env_clear()
            .envs(inherited_env())
            .env("HOME", &dir)
            .envs(&self.config.env)
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .env("ACTIONS_RUNNER_INPUT_JITCONFIG", spec.jit_config.expose())
            .env("HANGAR_RUNNER_ID", id.as_str())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .process_group(0);
        let mut child = command.spawn().map_err(|e| launch_error(id, "starting the runner", e))?;
        let pid = child.id().unwrap_or_default();
        if let Err(e) = tokio::fs::write(dir.join(PID_FILE), pid.to_string()).await {
            // Without a pid file nothing could find it again to kill it.
            let _ = child.start_kill();
            return Err(launch_error(id, "writing the pid file", e));
        }
        let dir_handle = std::fs::File::open(&dir)
            .map_err(|e| launch_error(id, "opening the work directory", e))?;
        let exit = ExitCell::default();
        self.children().insert(id.clone(), Arc::clone(&exit));
        let runner_id = id.clone();
        tokio::spawn(async move {
            let status = child.wait().await;
            let code = status.as_ref().ok().and_then(std::process::ExitStatus::code);
            let _ = exit.set(code);
            let code = match (status, code) {
                (Ok(_), Some(code)) => code.to_string(),
                (Ok(_), None) => "signal".to_owned(),
                (Err(_), _) => "unknown".to_owned(),
            };
            // Fails when the runner was destroyed (its directory is gone); fine.
            let _ = write_in(&dir_handle, EXIT_FILE, &code).await;
            tracing::debug!(runner_id = %runner_id, code = %code, "Runner process exited.");
        });
        Ok(Instance {
            runner_id: id.clone(),
            state: InstanceState::Running,
            launched_at: chrono::Utc::now(),
            detail: format!("pid {pid} in {}", dir.display()),
        })
    }

    async fn destroy(&self, runner_id: &RunnerId) -> Result<(), ProviderError> {
        let dir = self.dir(runner_id);
        let destroy_error = |reason: &str, source: std::io::Error| ProviderError::Destroy {
            runner_id: runner_id.clone(),
            reason: reason.to_owned(),
            source: Some(Box::new(source)),
        };
        let pid = tokio::fs::read_to_string(dir.join(PID_FILE))
            .await
            .ok()
            .and_then(|pid| pid.trim().parse::<u32>().ok());
        if let Some(pid) = pid
            && alive(pid, &dir).await
        {
            // The child leads its own group: kill the group.
            let status = tokio::process::Command::new("kill")
                .args(["-KILL", "--", &format!("-{pid}")])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .await
                .map_err(|e| destroy_error("running kill", e))?;
            if !status.success() && alive(pid, &dir).await {
                return Err(ProviderError::Destroy {
                    runner_id: runner_id.clone(),
                    reason: format!("kill -KILL -{pid} failed"),
                    source: None,
                });
            }
        }
        self.children().remove(runner_id);
        // The reaping task writes `exit_code` right after the kill; if that
        // lands while the tree is being removed, the removal sees a non-empty
        // directory. Another pass removes the late file.
        let mut attempts = 0;
        loop {
            match tokio::fs::remove_dir_all(&dir).await {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::DirectoryNotEmpty && attempts < 10 => {
                    attempts += 1;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(e) => return Err(destroy_error("removing the work directory", e)),
            }
        }
    }

    async fn list(&self) -> Result<Vec<Instance>, ProviderError> {
        let mut entries = match tokio::fs::read_dir(&self.work_root).await {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => {
                return Err(ProviderError::List {
                    reason: format!("reading {}", self.work_root.display()),
                    source: Some(Box::new(e)),
                });
            }
        };
        let mut instances = Vec::new();
        while let Ok(Some(entry)) = entries.next_entry().await {
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else { continue };
            let Ok(runner_id) = RunnerId::try_from(name) else { continue };
            match self.instance_read(&runner_id).await {
                Some(instance) => instances.push(instance),
                // A directory without a pid: a launch that died half-way.
                // Report it so the reaper destroys it.
                None => instances.push(Instance {
                    runner_id,
                    state: InstanceState::Exited { code: None },
                    launched_at: chrono::Utc::now(),
                    detail: "incomplete launch".into(),
                }),
            }
        }
        instances.sort_by(|a, b| a.runner_id.cmp(&b.runner_id));
        Ok(instances)
    }

    async fn health(&self) -> Health {
        if let Err(e) = private_dir_create(&self.work_root) {
            return Health {
                ok: false,
                message: format!("cannot create {}: {e}", self.work_root.display()),
            };
        }
        Health {
            ok: true,
            message: "process provider: runners are local child processes, NOT isolated".into(),
        }
    }
}

#[cfg(test)]
mod tests;
