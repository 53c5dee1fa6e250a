//! Why a saga step failed: which step, and the error underneath.

use std::fmt;
use std::time::Duration;

use hangar_github::GitHubError;
use hangar_provider::ProviderError;
use hangar_store::{FailureKind, StoreError};
use hangar_types::{PoolName, RunnerState};

/// The steps of creating and tearing down a runner (see the module docs of
/// [`crate::executor`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Mint,
    RecordRegistered,
    Launch,
    RecordLaunched,
    /// Re-reading the registration before a teardown.
    Reread,
    RecordDraining,
    ChargeFailure,
    DeleteRegistration,
    Destroy,
    RecordGone,
    KeepBusy,
}

impl Step {
    pub fn as_str(self) -> &'static str {
        match self {
            Step::Mint => "minting the JIT config",
            Step::RecordRegistered => "recording the registration",
            Step::Launch => "launching the instance",
            Step::RecordLaunched => "recording the launch",
            Step::Reread => "re-reading the registration",
            Step::RecordDraining => "recording the teardown",
            Step::ChargeFailure => "charging the job a failed launch",
            Step::DeleteRegistration => "deleting the registration",
            Step::Destroy => "destroying the instance",
            Step::RecordGone => "recording the runner gone",
            Step::KeepBusy => "keeping the runner busy",
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failed step. Steps fail fast: the planner decides what happens next
/// (a creation is torn down and the job retried with backoff; a teardown
/// is resumed by the next activation). The message names the step only;
/// log or record it with [`hangar_types::ErrorChain`] to keep the cause.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error("{step}: pool {pool} is not configured")]
    PoolMissing { step: Step, pool: PoolName },
    #[error("{step}: pool {pool} has no provider")]
    ProviderMissing { step: Step, pool: PoolName },
    #[error("{step}")]
    GitHub {
        step: Step,
        #[source]
        source: GitHubError,
    },
    #[error("{step}")]
    Provider {
        step: Step,
        #[source]
        source: ProviderError,
    },
    #[error("{step}")]
    Store {
        step: Step,
        #[source]
        source: StoreError,
    },
    #[error("{step}: timed out after {after:?}")]
    Timeout { step: Step, after: Duration },
    /// A conditional write lost: someone else moved the runner on.
    #[error("{step}: the runner moved to {state} meanwhile")]
    Moved { step: Step, state: RunnerState },
    /// The mint met a 409 and the registration holding the name is busy.
    #[error("{step}: an earlier registration with this name is busy")]
    NameBusy { step: Step },
}

impl StepError {
    pub fn step(&self) -> Step {
        match self {
            StepError::PoolMissing { step, .. }
            | StepError::ProviderMissing { step, .. }
            | StepError::GitHub { step, .. }
            | StepError::Provider { step, .. }
            | StepError::Store { step, .. }
            | StepError::Timeout { step, .. }
            | StepError::Moved { step, .. }
            | StepError::NameBusy { step } => *step,
        }
    }

    /// Whether trying again later may succeed without anyone changing
    /// anything: GitHub transport errors, 5xx and rate limits, timeouts,
    /// store errors and lost races. Not a missing pool or provider, nor a
    /// request GitHub refused as such (4xx).
    pub fn is_retryable(&self) -> bool {
        match self {
            StepError::PoolMissing { .. } | StepError::ProviderMissing { .. } => false,
            StepError::GitHub { source, .. } => source.is_retryable(),
            // Providers do not classify their errors (yet): capacity and
            // boot failures are usually transient.
            StepError::Provider { .. } => true,
            StepError::Store { .. }
            | StepError::Timeout { .. }
            | StepError::Moved { .. }
            | StepError::NameBusy { .. } => true,
        }
    }

    /// Whose failure it is when it fails a creation: a retryable one is
    /// the infrastructure's (it backs off, never gives the job up); the
    /// rest cannot succeed on a retry without someone changing something
    /// and count against the job's `launch_attempts`.
    pub fn failure_kind(&self) -> FailureKind {
        if self.is_retryable() { FailureKind::Infrastructure } else { FailureKind::Job }
    }

    pub(crate) fn github(step: Step) -> impl FnOnce(GitHubError) -> StepError {
        move |source| StepError::GitHub { step, source }
    }

    pub(crate) fn provider(step: Step) -> impl FnOnce(ProviderError) -> StepError {
        move |source| StepError::Provider { step, source }
    }

    pub(crate) fn store(step: Step) -> impl FnOnce(StoreError) -> StepError {
        move |source| StepError::Store { step, source }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hangar_types::ErrorChain;

    #[test]
    fn the_chain_names_the_step_then_the_cause() {
        let error = StepError::github(Step::Mint)(GitHubError::Conflict {
            scope: "octo-org".into(),
            name: "hangar-linux-1".into(),
        });
        assert_eq!(
            ErrorChain(&error).to_string(),
            "minting the JIT config: a runner named \"hangar-linux-1\" already exists in octo-org"
        );
        assert!(!error.is_retryable());
        assert_eq!(error.failure_kind(), FailureKind::Job);
        assert_eq!(error.step(), Step::Mint);
        let outage = StepError::github(Step::Mint)(GitHubError::Status {
            method: "POST",
            path: "/orgs/octo-org/actions/runners/generate-jitconfig".into(),
            status: 503,
            message: "unavailable".into(),
        });
        assert_eq!(outage.failure_kind(), FailureKind::Infrastructure);
        let timeout = StepError::Timeout { step: Step::Launch, after: Duration::from_secs(3) };
        assert_eq!(timeout.to_string(), "launching the instance: timed out after 3s");
        assert!(timeout.is_retryable());
        assert_eq!(timeout.failure_kind(), FailureKind::Infrastructure);
    }
}
