//! Config parsing and checking, as `hangar config check` and `hangar
//! serve` both see it (they share [`super::load`]).

use super::*;

fn check(text: &str) -> Result<Resolved, String> {
    check_env(text, &[])
}

fn check_env(text: &str, vars: &[(&str, &str)]) -> Result<Resolved, String> {
    let vars: Vec<(String, String)> =
        vars.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    let env = move |name: &str| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    load_text("hangar.toml", text, &env, Overrides::default()).map_err(|e| e.to_string())
}

#[test]
fn an_empty_file_is_all_defaults_and_runs_no_runners() {
    let resolved = check("").expect("valid");
    assert_eq!(resolved.file, HangarConfig::default());
    assert!(resolved.pools.is_empty());
    assert!(resolved.runners_off.as_deref().is_some_and(|w| w.contains("No GitHub credentials")));
}

#[test]
fn credentials_and_a_scope_run_the_default_pool_on_auto() {
    let env = [("HANGAR_GITHUB_TOKEN", "ghp_x"), (ENV_RUNNER_SCOPE, "octo-org")];
    let resolved = check_env("", &env).expect("valid");
    assert_eq!(resolved.pools.len(), 1);
    assert_eq!(resolved.pools[0].name.0, "default");
    assert_eq!(resolved.pools[0].provider, ProviderConfig::default());
    let labels = resolved.pools[0].runner_labels();
    for l in ["self-hosted", "linux", "x64"] {
        assert!(labels.is_superset_of(&hangar_types::Labels::new([l])), "{l}");
    }
    let no_scope = check_env("", &env[..1]).expect("valid: jobs are recorded");
    assert!(no_scope.runners_off.as_deref().is_some_and(|w| w.contains("no runner scope")));
    let bad_scope = check_env("", &[env[0], (ENV_RUNNER_SCOPE, "a/b/c")]).unwrap_err();
    assert!(bad_scope.contains("key `scheduler.runner_scope`"), "{bad_scope}");
}

#[test]
fn errors_name_the_file_the_line_the_key_and_the_expectation() {
    let error = check("[server]\nlisten = \"localhost\"\n").unwrap_err();
    assert!(error.starts_with("hangar.toml:2: key `server.listen`: "), "{error}");
    assert!(error.contains("socket address"), "{error}");

    let error = check("[server]\nlisten = \"127.0.0.1:1\"\nlistne = 3\n").unwrap_err();
    assert!(error.starts_with("hangar.toml:3: key `server"), "{error}");
    assert!(error.contains("unknown field `listne`"), "{error}");

    let error = check("[servre]\n").unwrap_err();
    assert!(error.contains("unknown field `servre`"), "{error}");

    let error = check("[server\n").unwrap_err();
    assert!(error.starts_with("hangar.toml:1: "), "{error}");

    let error = check("[server]\napi_token = \"short\"\n").unwrap_err();
    assert!(
        error.starts_with("hangar.toml:2: key `server.api_token`: expected at least 16 characters"),
        "{error}"
    );

    let error = check("[cache]\nttl = \"soon\"\n").unwrap_err();
    assert!(error.contains("key `cache.ttl`: expected a duration"), "{error}");

    let error = check("[cache]\nstorage = \"/tmp/x\"\n").unwrap_err();
    assert!(error.contains("key `cache.storage`: expected file:///"), "{error}");

    let error = check("[store]\nurl = \"mysql://x\"\n").unwrap_err();
    assert!(
        error.starts_with("hangar.toml:2: key `store.url`: expected a sqlite://PATH"),
        "{error}"
    );
}

#[test]
fn old_spellings_are_refused_with_the_new_one() {
    let error = check("[scheduler]\npickup_deadline = 300\n").unwrap_err();
    assert!(error.contains("key `scheduler.pickup_deadline`"), "{error}");
    assert!(error.contains("write \"300s\""), "{error}");
    let error = check("[cache]\neviction_schedule = \"every 1h\"\n").unwrap_err();
    assert!(error.contains("write \"1h\""), "{error}");
    let error = check("[github]\nrequest_timeout_secs = 5\n").unwrap_err();
    assert!(error.contains("it is now `request_timeout`"), "{error}");
    let pool = "[scheduler]\nrunner_scope = \"o\"\n[github]\ntoken = \"t\"\n[[pools]]\nname = \"a\"\n\
                labels = []\nmax_runners = 1\nprovider = \"microvm\"\n";
    check(pool).expect("a microvm pool with defaults");
    let error = check(&format!("{pool}[pools.settings]\nvcpus = 1\n")).unwrap_err();
    assert!(error.contains("[pools.provider.KIND]"), "{error}");
    let error =
        check(&pool.replace(
            "provider = \"microvm\"\n",
            "[pools.provider.microvm]\nboot_timeout_secs = 5\n",
        ))
        .unwrap_err();
    assert!(error.contains("it is now `boot_timeout`"), "{error}");
}

#[test]
fn checks_across_sections_run_at_load_with_their_line() {
    let pools = |body: &str| {
        format!("[scheduler]\nrunner_scope = \"octo-org\"\n[github]\ntoken = \"t\"\n{body}")
    };
    let pool = |name: &str, extra: &str| {
        format!("[[pools]]\nname = \"{name}\"\nlabels = [\"linux\"]\nmax_runners = 2\n{extra}")
    };
    let twice = pools(&format!("{}{}", pool("a", ""), pool("a", "")));
    let error = check(&twice).unwrap_err();
    assert!(error.starts_with("hangar.toml:10: key `pools[1].name`"), "{error}");
    let error = check(&pools(&pool("a", "min_hot = 3\n"))).unwrap_err();
    assert!(error.starts_with("hangar.toml:9: key `pools[0].min_hot`"), "{error}");
    let error = check(&pools(&pool("a", "provider = \"ec2\"\n"))).unwrap_err();
    assert!(error.contains("key `pools[0].provider`: expected one of"), "{error}");
    let no_credentials = pool("a", "");
    let error = check(&format!("[scheduler]\nrunner_scope = \"o\"\n{no_credentials}")).unwrap_err();
    assert!(error.contains("key `github`: expected GitHub credentials"), "{error}");
    let no_scope = format!("[github]\ntoken = \"t\"\n{no_credentials}");
    let error = check(&no_scope).unwrap_err();
    assert!(error.contains("key `scheduler.runner_scope`"), "{error}");
    let app = "[github]\napp_id = \"1\"\n";
    let error = check(app).unwrap_err();
    assert!(error.contains("key `github.installation_id`"), "{error}");
}

/// Every example loads once its placeholder secrets are replaced, and is
/// refused as shipped: a copied example never runs with a published secret.
#[test]
fn every_example_config_loads() {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let env = |name: &str| (name == "HANGAR_GITHUB_TOKEN").then(|| "ghp_example".to_owned());
    let mut checked = 0;
    let mut placeholders = 0;
    for entry in std::fs::read_dir(&examples).expect("examples/ exists") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "toml") {
            let name = path.display().to_string();
            let text = std::fs::read_to_string(&path).expect("example");
            let mut filled = text.clone();
            for placeholder in EXAMPLE_PLACEHOLDERS {
                filled = filled.replace(placeholder, "a-real-secret-0123456789abcdef");
            }
            let shipped = |l: &&str| !l.trim_start().starts_with('#');
            if text
                .lines()
                .filter(shipped)
                .any(|l| EXAMPLE_PLACEHOLDERS.iter().any(|p| l.contains(p)))
            {
                placeholders += 1;
                let error = load_text(&name, &text, &env, Overrides::default()).unwrap_err();
                assert!(error.to_string().contains("is a placeholder"), "{error}");
            }
            load_text(&name, &filled, &env, Overrides::default()).unwrap_or_else(|e| panic!("{e}"));
            checked += 1;
        }
    }
    assert!(checked >= 2, "expected example configs in {}", examples.display());
    assert!(placeholders >= 2, "the examples with a secret are checked");
}

#[test]
fn placeholder_and_short_secrets_are_refused_from_the_file_and_the_environment() {
    let error = check("[webhook]\nsecret = \"change-me-please-0123456789\"\n").unwrap_err();
    assert!(error.contains("key `webhook.secret`: is a placeholder"), "{error}");
    let error = check_env("", &[(ENV_WEBHOOK_SECRET, "x")]).unwrap_err();
    assert!(
        error.contains("key `webhook.secret`: HANGAR_WEBHOOK_SECRET: expected at least"),
        "{error}"
    );
    let error = check_env("", &[(ENV_API_TOKEN, "replace-with-a-long-random-token")]).unwrap_err();
    assert!(
        error.contains("key `server.api_token`: HANGAR_API_TOKEN: is a placeholder"),
        "{error}"
    );
    let good = check_env("", &[(ENV_WEBHOOK_SECRET, "  0123456789abcdef  ")]).expect("valid");
    assert_eq!(good.webhook_secret.expect("set").expose(), "0123456789abcdef");
}

/// `{:?}` of the configuration (logged, printed in panics) shows no secret.
#[test]
fn debug_output_holds_no_secret() {
    const CANARY: &str = "canary-5ecret-0123456789";
    let text = format!(
        "[server]\napi_token = \"{CANARY}-api\"\n[webhook]\nsecret = \"{CANARY}-hook\"\n\
         [github]\ntoken = \"{CANARY}-pat\"\n[store]\nurl = \"postgres://u:{CANARY}-db@localhost/h\"\n\
         [cache]\nurl_signing_key = \"{CANARY}-sign\"\n"
    );
    let pool = format!(
        "[scheduler]\nrunner_scope = \"o\"\n[[pools]]\nname = \"p\"\nlabels = []\nmax_runners = 1\n\
         [pools.provider.process]\ncommand = \"/bin/true\"\nenv = {{ HTTPS_PROXY = \"http://u:{CANARY}@proxy\" }}\n"
    );
    let resolved = check(&(text + &pool)).expect("valid");
    let debug = format!("{resolved:?} {:?}", resolved.file);
    assert!(debug.contains("HTTPS_PROXY=***"), "{debug}");
    assert!(!debug.contains(CANARY), "{debug}");
    let from_env =
        check_env("", &[(ENV_WEBHOOK_SECRET, CANARY), (ENV_API_TOKEN, CANARY)]).expect("valid");
    assert!(!format!("{from_env:?}").contains(CANARY));
}

#[test]
fn skipping_cache_token_verification_is_refused_off_loopback() {
    let insecure = "[cache]\ninsecure_skip_token_verification = true\n";
    check(insecure).expect("valid on the default loopback listener");
    for listen in ["0.0.0.0:8080", "10.0.0.1:8080", "[::]:8080"] {
        let error = check(&format!("[server]\nlisten = \"{listen}\"\n{insecure}")).unwrap_err();
        assert!(error.contains("key `cache.insecure_skip_token_verification`"), "{error}");
        assert!(error.contains("non-loopback"), "{error}");
    }
    check(&format!("[server]\nlisten = \"[::1]:8080\"\n{insecure}")).expect("IPv6 loopback");
    let off = "[server]\nlisten = \"0.0.0.0:8080\"\n[cache]\nenabled = false\n\
               insecure_skip_token_verification = true\n";
    check(off).expect("valid: the cache is off");
}

#[test]
fn the_cache_allow_list_defaults_to_the_runner_scope_owner() {
    let org = check_env("", &[(ENV_RUNNER_SCOPE, "octo-org")]).expect("valid");
    assert_eq!(org.file.cache.allowed_owners, ["octo-org"]);
    let repo = check("[scheduler]\nrunner_scope = \"octo-user/app\"\n").expect("valid");
    assert_eq!(repo.file.cache.allowed_owners, ["octo-user"]);
    let explicit =
        "[scheduler]\nrunner_scope = \"octo-org\"\n[cache]\nallowed_repository_ids = [7]\n";
    let explicit = check(explicit).expect("valid");
    assert!(explicit.file.cache.allowed_owners.is_empty(), "an explicit list stands alone");
    assert!(check("").expect("valid").file.cache.allowed_owners.is_empty());
    let error = check("[cache]\nallowed_owners = [\"a b\"]\n").unwrap_err();
    assert!(error.contains("key `cache.allowed_owners`"), "{error}");
}

#[test]
fn the_admin_listener_is_local_unless_a_token_guards_it() {
    let resolved = check("").expect("valid");
    assert_eq!(resolved.admin_listen.to_string(), DEFAULT_ADMIN_LISTEN);
    let unix = check("[server]\nadmin_listen = \"unix:/run/hangar/admin.sock\"\n").expect("valid");
    assert_eq!(unix.admin_listen, ListenAddr::Unix("/run/hangar/admin.sock".into()));

    let error = check("[server]\nadmin_listen = \"0.0.0.0:8081\"\n").unwrap_err();
    assert!(
        error.starts_with("hangar.toml:2: key `server.admin_listen`: expected a loopback"),
        "{error}"
    );
    let token = [(ENV_API_TOKEN, "a-token-of-sufficient-length")];
    check_env("[server]\nadmin_listen = \"0.0.0.0:8081\"\n", &token).expect("valid with a token");

    let error = check("[server]\nadmin_listen = \"unix:admin.sock\"\n").unwrap_err();
    assert!(
        error.contains("key `server.admin_listen`: expected an absolute socket path"),
        "{error}"
    );
    let error = check("[server]\nlisten = \"127.0.0.1:9000\"\nadmin_listen = \"127.0.0.1:9000\"\n")
        .unwrap_err();
    assert!(error.contains("expected an address other than server.listen"), "{error}");
}

#[test]
fn server_limits_have_defaults_and_are_checked() {
    let resolved = check("").expect("valid");
    assert_eq!(resolved.file.server.limits, hangar_server::Limits::default());
    let set = check(
        "[server.limits]\nmax_connections = 100\nheader_read_timeout = \"5s\"\n\
         webhook_body_timeout = \"3s\"\nwebhook_max_body_bytes = 262144\n\
         webhook_unverified_bodies = 8\n",
    )
    .expect("valid");
    assert_eq!(set.file.server.limits.header_read_timeout, std::time::Duration::from_secs(5));
    assert_eq!(set.file.server.limits.webhook_unverified_bodies, 8);
    let error = check("[server.limits]\nmax_connections = 0\n").unwrap_err();
    assert_eq!(error, "hangar.toml:2: key `server.limits.max_connections`: expected at least 1");
    let error = check("[server.limits]\nheader_read_timeout = \"0s\"\n").unwrap_err();
    assert!(
        error.contains("key `server.limits.header_read_timeout`: expected more than 0s"),
        "{error}"
    );
    let error = check("[server.limits]\nwebhook_max_body_bytes = 30000000\n").unwrap_err();
    assert!(
        error.contains("key `server.limits.webhook_max_body_bytes`: expected from 65536"),
        "{error}"
    );
    let error = check("[server.limits]\nheader_read_timeout = 10\n").unwrap_err();
    assert!(error.contains("key `server.limits.header_read_timeout`"), "{error}");
}
