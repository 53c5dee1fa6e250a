//! The one conformance suite every [`Provider`] runs in its own tests
//! (`FakeProvider` here, `provider-process`, the microVM and EC2 providers
//! in theirs). It checks the lifecycle contract written on the trait:
//! idempotent launch and destroy by runner id, `list` as the truth, destroy
//! leaving nothing, the JIT config never in `Debug` output, and (when the
//! provider runs a real runner command) exit being reported.

use std::time::Duration;

use hangar_types::{Labels, PoolName, RunnerId, Secret};

use crate::{InstanceState, Provider, RunnerSpec};

/// What the provider under test can be asked to do.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// The provider runs a runner that exits by itself shortly after start
    /// (e.g. the stand-in runner with no simulator): check that the exit is
    /// reported as `Exited` (or the instance disappears) within this time.
    pub runner_exits_within: Option<Duration>,
}

/// A spec for conformance runs: runner id `hangar-conformance-…`, JIT
/// config `jit-secret-<name>`.
pub fn spec(name: &str) -> RunnerSpec {
    let entropy = name
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
    RunnerSpec {
        runner_id: RunnerId::new(&PoolName("conformance".into()), entropy),
        pool: PoolName("conformance".into()),
        labels: Labels::new(["self-hosted", "conformance"]),
        jit_config: Secret::new(format!("jit-secret-{name}")),
        env: vec![("HANGAR_CONFORMANCE".into(), "1".into())],
    }
}

/// Runs the suite; panics with a message naming the broken rule.
pub async fn check(provider: &dyn Provider, options: Options) {
    let kind = provider.kind();
    let health = provider.health().await;
    assert!(health.ok, "{kind}: health must be ok in the conformance setup: {}", health.message);

    let a = spec("a");
    let b = spec("b");
    assert!(!format!("{a:?}").contains("jit-secret"), "{kind}: RunnerSpec Debug shows the secret");

    // Launch is idempotent by runner id.
    let first = provider.launch(&a).await.expect("launch a");
    assert_eq!(first.runner_id, a.runner_id, "{kind}: launch returns the spec's runner id");
    assert!(!format!("{first:?}").contains("jit-secret"), "{kind}: Instance shows the secret");
    let again = provider.launch(&a).await.expect("launch a twice");
    assert_eq!(again.runner_id, a.runner_id);
    provider.launch(&b).await.expect("launch b");
    let listed = provider.list().await.expect("list");
    let count = |id: &RunnerId| listed.iter().filter(|i| &i.runner_id == id).count();
    assert_eq!(count(&a.runner_id), 1, "{kind}: a second launch must not start a second instance");
    assert_eq!(count(&b.runner_id), 1, "{kind}: list must report every instance");

    // Exit is reported.
    if let Some(within) = options.runner_exits_within {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let listed = provider.list().await.expect("list");
            let exited = listed
                .iter()
                .find(|i| i.runner_id == a.runner_id)
                .is_none_or(|i| matches!(i.state, InstanceState::Exited { .. }));
            if exited {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "{kind}: runner exit not reported");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    // Destroy leaves nothing and is idempotent; unknown ids are already gone.
    provider.destroy(&a.runner_id).await.expect("destroy a");
    provider.destroy(&a.runner_id).await.expect("destroy a twice");
    provider.destroy(&spec("never-launched").runner_id).await.expect("destroy unknown");
    let listed = provider.list().await.expect("list");
    assert!(
        listed.iter().all(|i| i.runner_id != a.runner_id),
        "{kind}: destroyed instance still listed"
    );
    assert!(
        listed.iter().any(|i| i.runner_id == b.runner_id),
        "{kind}: destroy removed another instance"
    );
    provider.destroy(&b.runner_id).await.expect("destroy b");
    let listed = provider.list().await.expect("list");
    assert!(
        listed.iter().all(|i| i.runner_id != a.runner_id && i.runner_id != b.runner_id),
        "{kind}: instances left after destroy"
    );

    // A destroyed runner id can be launched again (a retried creation).
    provider.launch(&a).await.expect("relaunch a");
    provider.destroy(&a.runner_id).await.expect("destroy relaunched a");
}
