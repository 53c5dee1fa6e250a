//! `FakeProvider`: an in-memory provider tests can steer (fail the next
//! launch, hang it, kill an instance, plant an orphan) and inspect (which
//! runners were launched, when, with which JIT config).
//!
//! It runs nothing: instances are `Running` from launch until killed or
//! destroyed. It passes the same conformance suite as real providers.

use hangar_types::{RunnerId, Secret, Timestamp};
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::{Health, Instance, InstanceState, Provider, ProviderError, RunnerSpec};

/// See the module docs. Clones share state.
#[derive(Debug, Clone, Default)]
pub struct FakeProvider {
    state: Arc<Mutex<State>>,
}

#[derive(Debug, Default)]
struct State {
    instances: BTreeMap<RunnerId, Instance>,
    jit_configs: BTreeMap<RunnerId, Secret>,
    fail_launches: VecDeque<String>,
    fail_destroys: VecDeque<String>,
    hang_launches: u32,
    fail_list: Option<String>,
    unhealthy: Option<String>,
    launches: Vec<(RunnerId, Timestamp)>,
    destroys: Vec<RunnerId>,
}

impl FakeProvider {
    pub fn new() -> FakeProvider {
        FakeProvider::default()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The next launch fails with `reason` (queued: call twice, fail twice).
    pub fn fail_next_launch(&self, reason: &str) {
        self.state().fail_launches.push_back(reason.to_owned());
    }

    /// The next destroy fails with `reason`.
    pub fn fail_next_destroy(&self, reason: &str) {
        self.state().fail_destroys.push_back(reason.to_owned());
    }

    /// The next launch never returns (callers must time it out).
    pub fn hang_next_launch(&self) {
        self.state().hang_launches += 1;
    }

    /// `list` fails until called with `None`.
    pub fn fail_list(&self, reason: Option<&str>) {
        self.state().fail_list = reason.map(str::to_owned);
    }

    /// `health` reports this problem until called with `None`.
    pub fn set_unhealthy(&self, message: Option<&str>) {
        self.state().unhealthy = message.map(str::to_owned);
    }

    /// The runner in `runner_id`'s instance exits with `code` (as a crash or
    /// a finished job would).
    pub fn kill(&self, runner_id: &RunnerId, code: i32) {
        if let Some(instance) = self.state().instances.get_mut(runner_id) {
            instance.state = InstanceState::Exited { code: Some(code) };
        }
    }

    /// An instance hangar never launched (an orphan after a crash).
    pub fn plant(&self, runner_id: RunnerId) {
        let instance = Instance {
            runner_id: runner_id.clone(),
            state: InstanceState::Running,
            launched_at: chrono::Utc::now(),
            detail: "planted".into(),
        };
        self.state().instances.insert(runner_id, instance);
    }

    /// Every successful launch call, in order, with when it happened.
    pub fn launches(&self) -> Vec<(RunnerId, Timestamp)> {
        self.state().launches.clone()
    }

    /// Every destroy call that found an instance.
    pub fn destroys(&self) -> Vec<RunnerId> {
        self.state().destroys.clone()
    }

    /// The JIT config a runner was launched with.
    pub fn jit_config(&self, runner_id: &RunnerId) -> Option<String> {
        self.state().jit_configs.get(runner_id).map(|s| s.expose().to_owned())
    }

    /// Instances held right now.
    pub fn instance_count(&self) -> usize {
        self.state().instances.len()
    }
}

#[async_trait::async_trait]
impl Provider for FakeProvider {
    fn kind(&self) -> &'static str {
        "fake"
    }

    async fn launch(&self, spec: &RunnerSpec) -> Result<Instance, ProviderError> {
        let hang = {
            let mut state = self.state();
            if let Some(existing) = state.instances.get(&spec.runner_id) {
                return Ok(existing.clone());
            }
            if let Some(reason) = state.fail_launches.pop_front() {
                return Err(ProviderError::Launch {
                    runner_id: spec.runner_id.clone(),
                    reason,
                    source: None,
                });
            }
            let hang = state.hang_launches > 0;
            state.hang_launches = state.hang_launches.saturating_sub(1);
            hang
        };
        if hang {
            std::future::pending::<()>().await;
        }
        let instance = Instance {
            runner_id: spec.runner_id.clone(),
            state: InstanceState::Running,
            launched_at: chrono::Utc::now(),
            detail: "fake".into(),
        };
        let mut state = self.state();
        state.instances.insert(spec.runner_id.clone(), instance.clone());
        state.jit_configs.insert(spec.runner_id.clone(), spec.jit_config.clone());
        state.launches.push((spec.runner_id.clone(), instance.launched_at));
        Ok(instance)
    }

    async fn destroy(&self, runner_id: &RunnerId) -> Result<(), ProviderError> {
        let mut state = self.state();
        if let Some(reason) = state.fail_destroys.pop_front() {
            return Err(ProviderError::Destroy {
                runner_id: runner_id.clone(),
                reason,
                source: None,
            });
        }
        if state.instances.remove(runner_id).is_some() {
            state.destroys.push(runner_id.clone());
        }
        state.jit_configs.remove(runner_id);
        Ok(())
    }

    async fn list(&self) -> Result<Vec<Instance>, ProviderError> {
        let state = self.state();
        if let Some(reason) = &state.fail_list {
            return Err(ProviderError::List { reason: reason.clone(), source: None });
        }
        Ok(state.instances.values().cloned().collect())
    }

    async fn health(&self) -> Health {
        match &self.state().unhealthy {
            Some(message) => Health { ok: false, message: message.clone() },
            None => Health { ok: true, message: "fake provider".into() },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn fake_provider_passes_the_conformance_suite() {
        let provider = FakeProvider::new();
        crate::conformance::check(&provider, crate::conformance::Options::default()).await;
    }

    #[tokio::test]
    async fn fake_provider_fails_and_kills_on_request() {
        let provider = FakeProvider::new();
        let spec = crate::conformance::spec("fake-a");
        provider.fail_next_launch("no capacity");
        let err = provider.launch(&spec).await.expect_err("launch fails once");
        assert!(err.to_string().contains("no capacity"), "{err}");
        provider.launch(&spec).await.expect("second launch works");
        assert_eq!(provider.jit_config(&spec.runner_id).as_deref(), Some("jit-secret-fake-a"));
        provider.kill(&spec.runner_id, 3);
        let listed = provider.list().await.expect("list");
        assert_eq!(listed[0].state, InstanceState::Exited { code: Some(3) });
        provider.hang_next_launch();
        let other = crate::conformance::spec("fake-b");
        let hung =
            tokio::time::timeout(std::time::Duration::from_millis(50), provider.launch(&other));
        assert!(hung.await.is_err(), "launch hangs");
    }
}
