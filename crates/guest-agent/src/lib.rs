//! The host↔guest protocol of hangar's microVMs, shared by the guest agent
//! (the binary in this crate) and the host side (`hangar-provider-microvm`).
//!
//! The channel is a virtio-serial port named [`PORT_NAME`]: a plain byte
//! stream (no tty line discipline) that QEMU connects to a unix socket the
//! host listens on. Messages are JSON objects, one per line, tagged by
//! `type`. The conversation is short and one-way at each step:
//!
//! ```text
//!   guest: ready            (agent booted, mounts + network done, idle)
//!   host:  start {spec}     (exactly once; carries the JIT config)
//!   guest: runner_started {pid}
//!   guest: runner_exited {code}   then the guest powers off
//! ```
//!
//! `ping` from the host makes an idle agent repeat `ready` (used after a
//! snapshot restore, where the original `ready` went to another process).
//! Secrets only ever travel in `start`, never on the kernel command line or
//! in the image.

use std::fmt;

use serde::{Deserialize, Serialize};

pub mod prewarm;
pub mod users;

/// The virtio-serial port name the agent looks for under
/// `/sys/class/virtio-ports/*/name`.
pub const PORT_NAME: &str = "org.hangar.agent";

/// Where the image builder writes [`AgentConfig`] in the root filesystem.
pub const CONFIG_PATH: &str = "/etc/hangar/agent.json";

/// Where the image builder installs the agent binary; the kernel command
/// line names it as `init=`.
pub const AGENT_PATH: &str = "/usr/local/sbin/hangar-guest-agent";

/// The substitution marker for the JIT config in [`AgentConfig::runner_command`].
pub const JIT_CONFIG_MARKER: &str = "{jit_config}";

/// What the image tells the agent about its runner. Baked into the image
/// at build time; contains nothing secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// argv of the runner; [`JIT_CONFIG_MARKER`] is replaced by the JIT
    /// config, e.g. `["/home/runner/run.sh", "--jitconfig", "{jit_config}"]`.
    pub runner_command: Vec<String>,
    /// The unprivileged user the runner runs as, resolved from the image's
    /// `/etc/passwd` and `/etc/group` when the image is built (see
    /// [`users::lookup`]), so booting reads neither.
    pub runner_user: users::Account,
    /// The runner's working directory.
    pub runner_workdir: String,
    /// dockerd to start before the runner when the image has it.
    #[serde(default)]
    pub dockerd: Option<String>,
}

/// One message from the host to the guest.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum HostMessage {
    /// Start the runner. Sent once per VM.
    Start {
        runner_id: String,
        jit_config: String,
        env: Vec<(String, String)>,
        /// The host's clock (unix ms): a VM restored from a snapshot wakes
        /// with the clock of the moment it was saved.
        #[serde(default)]
        now_unix_ms: Option<u64>,
    },
    /// Asks an idle agent to say `ready` again.
    Ping,
}

impl fmt::Debug for HostMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostMessage::Start { runner_id, env, now_unix_ms, .. } => f
                .debug_struct("Start")
                .field("runner_id", runner_id)
                .field("jit_config", &"<redacted>")
                .field("env", &env.iter().map(|(k, _)| k).collect::<Vec<_>>())
                .field("now_unix_ms", now_unix_ms)
                .finish(),
            HostMessage::Ping => f.write_str("Ping"),
        }
    }
}

/// One message from the guest to the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum GuestMessage {
    /// The agent is up and waits for `start`.
    Ready,
    /// The runner process exists.
    RunnerStarted { pid: u32 },
    /// The runner ended; `code` is `None` when a signal killed it.
    RunnerExited { code: Option<i32> },
    /// Something went wrong in the agent; the VM powers off after this.
    Error { message: String },
}

/// Encodes a message as one line (with the trailing newline).
pub fn encode_line<T: Serialize>(message: &T) -> Vec<u8> {
    let mut line = serde_json::to_vec(message).expect("protocol messages always serialize");
    line.push(b'\n');
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_as_tagged_lines() {
        let start = HostMessage::Start {
            runner_id: "hangar-p-1".into(),
            jit_config: "s3cret".into(),
            env: vec![("A".into(), "b".into())],
            now_unix_ms: Some(1),
        };
        let line = encode_line(&start);
        assert!(line.ends_with(b"\n"));
        assert!(String::from_utf8_lossy(&line).starts_with(r#"{"type":"start""#));
        let back: HostMessage = serde_json::from_slice(&line).unwrap();
        assert_eq!(back, start);
        let exited: GuestMessage =
            serde_json::from_str(r#"{"type":"runner_exited","code":3}"#).unwrap();
        assert_eq!(exited, GuestMessage::RunnerExited { code: Some(3) });
    }

    #[test]
    fn debug_output_never_shows_the_jit_config() {
        let start = HostMessage::Start {
            runner_id: "hangar-p-1".into(),
            jit_config: "s3cret".into(),
            env: vec![("TOKEN".into(), "hidden".into())],
            now_unix_ms: None,
        };
        let shown = format!("{start:?}");
        assert!(!shown.contains("s3cret") && !shown.contains("hidden"), "{shown}");
    }
}
