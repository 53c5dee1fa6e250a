//! A runner as hangar knows it: the explicit state machine every runner
//! write goes through.
//!
//! # States
//!
//! ```text
//!   planned ──► registered ──► launched ──► busy ──► draining ──► gone
//!
//!   planned, registered, launched ──► draining   reap, or a step failed
//!   planned, registered           ──► busy       GitHub says busy after a restart
//!   draining                      ──► busy       the delete said 422: busy
//! ```
//!
//! - `planned`: the id is persisted and nothing else has happened. The id
//!   ([`RunnerId`]) is generated *before* any side effect, and it is the
//!   runner's GitHub name and its instance name, so a crash at any later step
//!   leaves something findable by name.
//! - `registered`: GitHub minted a JIT config (a registration exists).
//! - `launched`: the provider holds an instance running the runner.
//! - `busy`: GitHub assigned a job to it (an `in_progress` event named it).
//! - `draining`: hangar decided to tear it down, for the recorded reason.
//! - `gone`: registration deleted and instance destroyed. Terminal.
//!
//! `draining → busy` exists for one race only: the reaper re-read the runner
//! as idle, then GitHub's delete answered 422 because a job was assigned in
//! between. A busy runner is never torn down.
//!
//! `planned → busy` and `registered → busy` are what a restart leaves: hangar
//! died after minting (or launching) but before recording it, and GitHub now
//! names the runner as running a job (a job's `runner_name`, or a busy
//! registration on re-read). Only an instance holding the runner's JIT
//! config can run a job, so "busy" proves the unrecorded steps happened; the
//! record skips ahead to what is true instead of being torn down, and is
//! reaped like any busy runner once its job completes or its instance ends.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::{GitHubRunnerId, JobId, PoolName, RunnerId, Timestamp};

/// Where a runner is in its lifecycle. See the module docs for the graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunnerState {
    Planned,
    Registered,
    Launched,
    Busy,
    Draining,
    Gone,
}

impl RunnerState {
    pub const ALL: [RunnerState; 6] = [
        RunnerState::Planned,
        RunnerState::Registered,
        RunnerState::Launched,
        RunnerState::Busy,
        RunnerState::Draining,
        RunnerState::Gone,
    ];

    /// The allowed transitions, all of them.
    pub fn can_transition_to(self, next: RunnerState) -> bool {
        use RunnerState::*;
        matches!(
            (self, next),
            (Planned, Registered | Busy | Draining)
                | (Registered, Launched | Busy | Draining)
                | (Launched, Busy | Draining)
                | (Busy, Draining)
                | (Draining, Busy | Gone)
        )
    }

    /// Still holds (or may hold) a registration or an instance.
    pub fn is_live(self) -> bool {
        self != RunnerState::Gone
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RunnerState::Planned => "planned",
            RunnerState::Registered => "registered",
            RunnerState::Launched => "launched",
            RunnerState::Busy => "busy",
            RunnerState::Draining => "draining",
            RunnerState::Gone => "gone",
        }
    }
}

impl fmt::Display for RunnerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RunnerState {
    type Err = String;

    fn from_str(s: &str) -> Result<RunnerState, String> {
        RunnerState::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| format!("unknown runner state {s:?}"))
    }
}

/// The durable picture of one runner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunnerRecord {
    pub id: RunnerId,
    pub pool: PoolName,
    pub state: RunnerState,
    /// Bumped on every write; writes are conditional on it.
    pub generation: i64,
    /// The job this runner was made for; `None` for a hot (pre-started) one.
    pub for_job: Option<JobId>,
    /// The job GitHub actually gave it (may differ from `for_job`: stolen).
    pub job: Option<JobId>,
    /// GitHub's numeric id of the registration, once minted.
    pub github_id: Option<GitHubRunnerId>,
    /// Why it is draining or gone (shown by the API and CLI).
    pub reason: Option<String>,
    /// When the runner was decided (its id generated and persisted).
    pub created_at: Timestamp,
    pub jit_minted_at: Option<Timestamp>,
    pub launched_at: Option<Timestamp>,
    /// When the provider first reported the instance running.
    pub ready_at: Option<Timestamp>,
    pub busy_at: Option<Timestamp>,
    pub gone_at: Option<Timestamp>,
}

impl RunnerRecord {
    /// A freshly decided runner: persisted in this shape before any side effect.
    pub fn planned(
        id: RunnerId,
        pool: PoolName,
        for_job: Option<JobId>,
        now: Timestamp,
    ) -> RunnerRecord {
        RunnerRecord {
            id,
            pool,
            state: RunnerState::Planned,
            generation: 1,
            for_job,
            job: None,
            github_id: None,
            reason: None,
            created_at: now,
            jit_minted_at: None,
            launched_at: None,
            ready_at: None,
            busy_at: None,
            gone_at: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transitions_move_forward_and_gone_is_terminal() {
        for state in RunnerState::ALL {
            assert!(!state.can_transition_to(state), "{state} → {state}");
            assert!(!RunnerState::Gone.can_transition_to(state));
            assert_eq!(state.as_str().parse::<RunnerState>(), Ok(state));
            if state != RunnerState::Gone {
                let reachable = RunnerState::ALL.iter().any(|&s| state.can_transition_to(s));
                assert!(reachable, "{state} is a dead end");
            }
        }
        // Every state but `gone` can be drained: a failure at any step is cleaned up.
        for state in [RunnerState::Planned, RunnerState::Registered, RunnerState::Launched] {
            assert!(state.can_transition_to(RunnerState::Draining));
        }
        assert!(!RunnerState::Launched.can_transition_to(RunnerState::Planned));
        assert!(!RunnerState::Busy.can_transition_to(RunnerState::Launched));
        // GitHub naming a runner busy is proof enough, from any state before busy.
        for state in [RunnerState::Planned, RunnerState::Registered, RunnerState::Launched] {
            assert!(state.can_transition_to(RunnerState::Busy), "{state} → busy");
        }
    }
}
