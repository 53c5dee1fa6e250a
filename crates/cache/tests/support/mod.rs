//! Test fixtures: a JWKS issuer standing in for GitHub (an RSA key generated
//! here), a running cache server on 127.0.0.1, and the real `@actions/cache`
//! npm client driven by `tests/node/client.mjs`.

#![allow(dead_code, unreachable_pub)] // each test binary uses a different subset

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hangar_cache::clock::{Clock, SystemClock};
use hangar_cache::index::{CacheIndex, MemIndex};
use hangar_cache::{CacheConfig, CacheService};
use rsa::pkcs1::EncodeRsaPrivateKey;
use rsa::traits::PublicKeyParts;
use sha2::{Digest, Sha256};

pub const KID: &str = "hangar-test-key";
/// The owner every test token names, and the one test servers allow.
pub const OWNER: &str = "hangar-test-org";
pub const MAIN: &str = "refs/heads/main";
pub const FEATURE: &str = "refs/heads/feature";

fn rsa_key() -> &'static (rsa::RsaPrivateKey, String) {
    static KEY: OnceLock<(rsa::RsaPrivateKey, String)> = OnceLock::new();
    KEY.get_or_init(|| {
        let key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).expect("RSA keygen");
        let pem = key.to_pkcs1_pem(rsa::pkcs8::LineEnding::LF).expect("PEM").to_string();
        (key, pem)
    })
}

/// A token issuer: serves `/jwks` and mints RS256 runtime tokens.
pub struct Issuer {
    pub url: String,
    pub jwks_url: String,
    _task: tokio::task::JoinHandle<()>,
}

/// The test key's JWKS (one RS256 key, `kid` [`KID`]).
pub fn jwks() -> serde_json::Value {
    let (key, _) = rsa_key();
    let public = key.to_public_key();
    serde_json::json!({ "keys": [{
        "kty": "RSA", "alg": "RS256", "use": "sig", "kid": KID,
        "n": URL_SAFE_NO_PAD.encode(public.n().to_bytes_be()),
        "e": URL_SAFE_NO_PAD.encode(public.e().to_bytes_be()),
    }]})
}

/// The test key's public half, PEM (for algorithm-confusion tokens).
pub fn public_pem() -> String {
    use rsa::pkcs8::EncodePublicKey;
    rsa_key().0.to_public_key().to_public_key_pem(rsa::pkcs8::LineEnding::LF).expect("PEM")
}

/// `claims` signed RS256 with the test key, under header `kid`.
pub fn sign(kid: Option<&str>, claims: &serde_json::Value) -> String {
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = kid.map(str::to_owned);
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(rsa_key().1.as_bytes()).unwrap();
    jsonwebtoken::encode(&header, claims, &key).unwrap()
}

/// Good claims for `repo` of `owner`, issued by `iss`, reading and writing main.
pub fn claims(iss: &str, repo: i64, owner: &str) -> serde_json::Value {
    let now = unix_now();
    serde_json::json!({
        "iss": iss, "nbf": now - 60, "exp": now + 3600, "iat": now - 60,
        "repository_id": repo.to_string(), "repository_owner": owner,
        "ac": serde_json::json!([{ "Scope": MAIN, "Permission": 3 }]).to_string(),
    })
}

impl Issuer {
    pub async fn start() -> Issuer {
        let jwks = jwks();
        let app = axum::Router::new()
            .route("/jwks", axum::routing::get(move || async move { axum::Json(jwks) }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Issuer {
            url: format!("http://{addr}"),
            jwks_url: format!("http://{addr}/jwks"),
            _task: task,
        }
    }

    /// A token for `repo` with these `(scope, permission)` pairs.
    pub fn token(&self, repo: i64, scopes: &[(&str, i64)]) -> String {
        let now = unix_now();
        self.token_with(repo, scopes, &self.url, now - 60, now + 3600)
    }

    pub fn token_with(
        &self,
        repo: i64,
        scopes: &[(&str, i64)],
        iss: &str,
        nbf: i64,
        exp: i64,
    ) -> String {
        let ac: Vec<serde_json::Value> = scopes
            .iter()
            .map(|(s, p)| serde_json::json!({ "Scope": s, "Permission": p }))
            .collect();
        let claims = serde_json::json!({
            "iss": iss, "nbf": nbf, "exp": exp, "iat": nbf,
            "repository_id": repo.to_string(), "repository_owner": OWNER,
            "ac": serde_json::Value::Array(ac).to_string(),
        });
        sign(Some(KID), &claims)
    }

    /// A token for `repo` that reads and writes `own` and reads `main`.
    pub fn branch_token(&self, repo: i64, own: &str) -> String {
        if own == MAIN {
            self.token(repo, &[(MAIN, 3)])
        } else {
            self.token(repo, &[(own, 3), (MAIN, 1)])
        }
    }
}

pub fn unix_now() -> i64 {
    i64::try_from(SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()).unwrap()
}

/// A cache server on 127.0.0.1.
pub struct Server {
    pub url: String,
    pub service: CacheService,
    pub dir: tempfile::TempDir,
    _task: tokio::task::JoinHandle<()>,
}

impl Server {
    pub async fn start(issuer: &Issuer) -> Server {
        Self::start_with(issuer, Arc::new(MemIndex::default()), None, Arc::new(SystemClock)).await
    }

    pub async fn start_with(
        issuer: &Issuer,
        index: Arc<dyn CacheIndex>,
        storage: Option<String>,
        clock: Arc<dyn Clock>,
    ) -> Server {
        let config = CacheConfig { storage, ..Self::config(&issuer.url, &issuer.jwks_url) };
        Self::start_config(config, index, clock).await
    }

    /// The config test servers use: this issuer, [`OWNER`] allowed.
    pub fn config(issuer: &str, jwks_url: &str) -> CacheConfig {
        CacheConfig {
            token_issuer: issuer.to_owned(),
            token_jwks_url: jwks_url.to_owned(),
            allowed_owners: vec![OWNER.to_owned()],
            ..CacheConfig::default()
        }
    }

    pub async fn start_config(
        config: CacheConfig,
        index: Arc<dyn CacheIndex>,
        clock: Arc<dyn Clock>,
    ) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let service = CacheService::new(&config, dir.path(), index, clock).unwrap();
        let app = hangar_cache::router(service.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Server { url: format!("http://{addr}"), service, dir, _task: task }
    }
}

/// Which client and protocol a run uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    V1,
    V2,
}

/// One client call.
#[derive(Debug, Clone)]
pub enum Op {
    Save { workspace: PathBuf, key: String, token: String },
    Restore { workspace: PathBuf, key: String, restore_keys: Vec<String>, token: String },
}

impl Op {
    pub fn save(workspace: &Path, key: &str, token: &str) -> Op {
        Op::Save { workspace: workspace.to_owned(), key: key.to_owned(), token: token.to_owned() }
    }

    pub fn restore(workspace: &Path, key: &str, restore_keys: &[&str], token: &str) -> Op {
        Op::Restore {
            workspace: workspace.to_owned(),
            key: key.to_owned(),
            restore_keys: restore_keys.iter().map(|k| (*k).to_owned()).collect(),
            token: token.to_owned(),
        }
    }

    fn json(&self) -> serde_json::Value {
        match self {
            Op::Save { workspace, key, token } => serde_json::json!({
                "op": "save", "key": key, "paths": ["payload"], "workspace": workspace, "token": token,
            }),
            Op::Restore { workspace, key, restore_keys, token } => serde_json::json!({
                "op": "restore", "key": key, "restoreKeys": restore_keys, "paths": ["payload"],
                "workspace": workspace, "token": token,
            }),
        }
    }
}

/// The real `@actions/cache` client.
pub struct Client {
    pub modules: String,
    pub package: &'static str,
    pub proto: Proto,
}

/// What one client call printed and returned.
#[derive(Debug)]
pub struct Run {
    pub stdout: String,
    pub result: serde_json::Value,
}

impl Run {
    pub fn saved_id(&self) -> i64 {
        self.result["id"].as_i64().unwrap()
    }

    pub fn restored_key(&self) -> Option<String> {
        self.result["key"].as_str().map(str::to_owned)
    }

    pub fn assert_no_warning(&self) {
        assert!(!self.stdout.contains("::warning::"), "the client warned:\n{}", self.stdout);
    }
}

pub fn node_modules(what: &str) -> Option<String> {
    hangar_test_harness::require_env("TEST_NODE_MODULES", what)
}

impl Client {
    pub fn new(modules: &str, package: &'static str, proto: Proto) -> Client {
        Client { modules: modules.to_owned(), package, proto }
    }

    /// Runs `ops` in order in one node process against `base_url`.
    pub async fn batch_at(&self, base_url: &str, ops: &[Op]) -> Vec<Run> {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/node/client.mjs");
        let temp = tempfile::tempdir().unwrap();
        let ops_json = serde_json::Value::Array(ops.iter().map(Op::json).collect()).to_string();
        let mut cmd = tokio::process::Command::new("node");
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", std::env::var("HOME").unwrap_or_default())
            .env("RUNNER_TEMP", temp.path())
            .arg(script)
            .arg(&self.modules)
            .arg(self.package)
            .arg(ops_json);
        match self.proto {
            Proto::V2 => cmd
                .env("ACTIONS_CACHE_SERVICE_V2", "true")
                .env("ACTIONS_RESULTS_URL", format!("{base_url}/")),
            Proto::V1 => cmd.env("ACTIONS_CACHE_URL", format!("{base_url}/")),
        };
        let started = std::time::Instant::now();
        let out = cmd.output().await.expect("node runs");
        eprintln!(
            "client {} {:?}: {} calls in {:?}",
            self.package,
            self.proto,
            ops.len(),
            started.elapsed()
        );
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "client failed: {}\nstdout:\n{stdout}\nstderr:\n{stderr}",
            out.status
        );
        let mut runs = Vec::new();
        for (i, section) in stdout.split("HANGAR_BEGIN ").skip(1).enumerate() {
            let marker = format!("HANGAR_RESULT {i} ");
            let line = section
                .lines()
                .find_map(|l| l.strip_prefix(marker.as_str()))
                .unwrap_or_else(|| panic!("no result for call {i}:\n{stdout}\n{stderr}"));
            runs.push(Run {
                stdout: section.to_owned(),
                result: serde_json::from_str(line).unwrap(),
            });
        }
        assert_eq!(runs.len(), ops.len(), "stdout:\n{stdout}");
        runs
    }

    pub async fn batch(&self, server: &Server, ops: &[Op]) -> Vec<Run> {
        self.batch_at(&server.url, ops).await
    }
}

/// Writes `workspace/payload/` with a `size`-byte incompressible file and a
/// small nested one; returns the tree's digest.
pub fn make_payload(workspace: &Path, size: usize, seed: u64) -> String {
    let dir = workspace.join("payload");
    std::fs::create_dir_all(dir.join("nested")).unwrap();
    let mut random = std::io::Read::take(std::fs::File::open("/dev/urandom").unwrap(), size as u64);
    let mut file = std::fs::File::create(dir.join("data.bin")).unwrap();
    std::io::copy(&mut random, &mut file).unwrap();
    std::fs::write(dir.join("nested").join("note.txt"), format!("seed {seed}\n")).unwrap();
    tree_digest(workspace)
}

/// Digest of every file under `workspace/payload` (relative path + bytes).
pub fn tree_digest(workspace: &Path) -> String {
    let mut files = Vec::new();
    walk(&workspace.join("payload"), &mut files);
    files.sort();
    let mut hash = Sha256::new();
    for f in files {
        hash.update(f.strip_prefix(workspace).unwrap().to_string_lossy().as_bytes());
        hash.update([0]);
        let mut file = std::fs::File::open(&f).unwrap();
        std::io::copy(&mut file, &mut hash).unwrap();
    }
    hex::encode(hash.finalize())
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries {
        let path = e.unwrap().path();
        if path.is_dir() {
            walk(&path, out);
        } else {
            out.push(path);
        }
    }
}

/// A fresh workspace directory inside `root`.
pub fn workspace(root: &Path, name: &str) -> PathBuf {
    let dir = root.join(name).join("ws");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
