//! [`Unavailable`]: the provider of a pool that cannot run anything on this
//! host, and says why. Its health is never ok, so the planner starts
//! nothing for the pool and tells waiting jobs the reason; `/healthz`
//! reports it. This is how isolation fails closed: a pool that asked for
//! microVMs never gets local processes in their place.

use hangar_types::RunnerId;

use crate::{Health, Instance, Provider, ProviderError, RunnerSpec};

/// See the module docs.
#[derive(Debug, Clone)]
pub struct Unavailable {
    kind: &'static str,
    reason: String,
}

impl Unavailable {
    /// A pool of `kind` that cannot run, because of `reason` (which should
    /// say what to do about it).
    pub fn new(kind: &'static str, reason: impl Into<String>) -> Unavailable {
        Unavailable { kind, reason: reason.into() }
    }

    pub fn reason(&self) -> &str {
        &self.reason
    }
}

#[async_trait::async_trait]
impl Provider for Unavailable {
    fn kind(&self) -> &'static str {
        self.kind
    }

    async fn launch(&self, spec: &RunnerSpec) -> Result<Instance, ProviderError> {
        Err(ProviderError::Launch {
            runner_id: spec.runner_id.clone(),
            reason: self.reason.clone(),
            source: None,
        })
    }

    /// Nothing was ever launched, so nothing is to destroy.
    async fn destroy(&self, _runner_id: &RunnerId) -> Result<(), ProviderError> {
        Ok(())
    }

    async fn list(&self) -> Result<Vec<Instance>, ProviderError> {
        Ok(Vec::new())
    }

    async fn health(&self) -> Health {
        Health { ok: false, message: self.reason.clone() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn it_says_why_and_runs_nothing() {
        let p = Unavailable::new("microvm", "no microVM image: run `hangar image build SPEC`");
        let health = p.health().await;
        assert!(!health.ok);
        assert!(health.message.contains("hangar image build"));
        let pool = hangar_types::PoolName("p".into());
        let spec = RunnerSpec {
            runner_id: RunnerId::new(&pool, 7),
            pool,
            labels: hangar_types::Labels::new(["self-hosted"]),
            jit_config: hangar_types::Secret::new("jit"),
            env: Vec::new(),
        };
        let err = p.launch(&spec).await.expect_err("launch refused");
        assert!(err.to_string().contains("no microVM image"), "{err}");
        assert!(p.list().await.expect("list").is_empty());
        p.destroy(&spec.runner_id).await.expect("destroy is idempotent");
    }
}
