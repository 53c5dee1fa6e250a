//! `hangar config check` and `hangar serve` accept exactly the same files:
//! both go through `hangar::config::load`, and this runs the real binary
//! both ways on a table of good and bad files, every file in `examples/`
//! among them. Nothing leaves the machine: GitHub is a closed local port,
//! the image cache is empty (so no VM boots), the database is SQLite in a
//! scratch directory.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Every `[github]` section points at a closed local port.
const GITHUB: &str = "[github]\napi_url = \"http://127.0.0.1:9\"\n";

fn examples() -> Vec<(String, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let mut files: Vec<(String, String)> = std::fs::read_dir(&dir)
        .expect("examples/")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .map(|p| {
            let text = std::fs::read_to_string(&p).expect("example");
            let name = p.file_name().expect("name").to_string_lossy().into_owned();
            let mut text = text.replace("[github]\n", GITHUB);
            // As a user would: the shipped placeholder secrets are refused.
            for placeholder in hangar::config::EXAMPLE_PLACEHOLDERS {
                text = text.replace(placeholder, "a-real-secret-0123456789abcdef");
            }
            (name, text)
        })
        .collect();
    files.sort();
    assert!(files.len() >= 4, "expected the example configs");
    files
}

/// (name, text, whether it is good).
fn table() -> Vec<(String, String, bool)> {
    let pools = |body: &str| {
        format!(
            "{GITHUB}[scheduler]\nrunner_scope = \"octo-org\"\n[[pools]]\nname = \"a\"\nlabels = [\"linux\"]\nmax_runners = 2\n{body}"
        )
    };
    let mut table: Vec<(String, String, bool)> =
        examples().into_iter().map(|(name, text)| (name, text, true)).collect();
    for (name, text, good) in [
        ("empty", String::new(), true),
        ("process pool", pools("[pools.provider.process]\ncommand = \"/bin/true\"\n"), true),
        ("auto pool", pools("provider = \"auto\"\n"), true),
        ("microvm pool, no image here", pools("provider = \"microvm\"\n"), true),
        (
            "durations",
            "[scheduler]\npickup_deadline = \"90s\"\nshutdown_grace = \"5s\"\n".into(),
            true,
        ),
        (
            "duplicate pool names",
            pools("[[pools]]\nname = \"a\"\nlabels = []\nmax_runners = 1\n"),
            false,
        ),
        ("min_hot above max_runners", pools("min_hot = 3\n"), false),
        ("zero launch attempts", "[scheduler]\nlaunch_attempts = 0\n".into(), false),
        (
            "store retention and timeout",
            "[store]\nretention = \"30d\"\nstatement_timeout = \"10s\"\n".into(),
            true,
        ),
        ("retention under an hour", "[store]\nretention = \"10m\"\n".into(), false),
        (
            "backoff cap under the backoff",
            "[scheduler]\nlaunch_backoff = \"10s\"\nlaunch_backoff_max = \"5s\"\n".into(),
            false,
        ),
        ("bare seconds", "[scheduler]\npickup_deadline = 300\n".into(), false),
        ("old eviction spelling", "[cache]\neviction_schedule = \"every 1h\"\n".into(), false),
        ("unknown provider", pools("provider = \"ec2\"\n"), false),
        ("process pool without a command", pools("provider = \"process\"\n"), false),
        (
            "old settings table",
            pools("provider = \"microvm\"\n[pools.settings]\nvcpus = 1\n"),
            false,
        ),
        (
            "pools without a scope",
            format!("{GITHUB}[[pools]]\nname = \"a\"\nlabels = []\nmax_runners = 1\n"),
            false,
        ),
        ("App without an installation", "[github]\napp_id = \"1\"\n".into(), false),
        ("bad runner scope", "[scheduler]\nrunner_scope = \"a/b/c\"\n".into(), false),
        ("short API token", "[server]\napi_token = \"short\"\n".into(), false),
        ("short webhook secret", "[webhook]\nsecret = \"short\"\n".into(), false),
        (
            "the example's placeholder secret",
            "[webhook]\nsecret = \"change-me-to-the-secret-set-on-the-github-webhook\"\n".into(),
            false,
        ),
        ("typo", "[server]\nlistne = \"127.0.0.1:1\"\n".into(), false),
        ("not TOML", "[server\n".into(), false),
    ] {
        table.push((name.to_owned(), text, good));
    }
    table
}

fn hangar(dir: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_hangar"));
    command
        .env("HANGAR_GITHUB_TOKEN", "ghp_agreement")
        .env("HANGAR_CACHE_DIR", dir.join("empty-image-cache"))
        .env("HANGAR_DATABASE_URL", format!("sqlite://{}/hangar.db", dir.display()))
        .env("RUST_LOG", "warn")
        .env("RUST_BACKTRACE", "0")
        .env_remove("HANGAR_RUNNER_SCOPE")
        .env_remove("HANGAR_CONFIG");
    command
}

fn check_accepts(dir: &Path, file: &Path) -> (bool, String) {
    let out = hangar(dir).args(["config", "check", "--config"]).arg(file).output().expect("check");
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Whether `serve` starts (prints its listening line); then stops it.
fn serve_accepts(dir: &Path, file: &Path) -> (bool, String) {
    let log = dir.join("serve.log");
    let mut child = hangar(dir)
        .args(["serve", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--config"])
        .arg(file)
        .arg("--data-dir")
        .arg(dir.join("data"))
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("serve");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("read");
    let listening = line.starts_with("hangar listening on ");
    if listening {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid"));
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
    }
    let status = child.wait().expect("wait");
    let says = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(!listening || status.success(), "serve started, then failed to stop: {status}: {says}");
    (listening, says)
}

#[test]
fn config_check_and_serve_accept_the_same_files() {
    let mut disagreements = Vec::new();
    for (name, text, good) in table() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file: PathBuf = dir.path().join("hangar.toml");
        std::fs::write(&file, &text).expect("write");
        let (checked, check_says) = check_accepts(dir.path(), &file);
        let (served, serve_says) = serve_accepts(dir.path(), &file);
        if checked != good || served != good {
            disagreements.push(format!(
                "{name}: expected {}, config check {} ({}), serve {} ({})",
                if good { "accepted" } else { "refused" },
                if checked { "accepted" } else { "refused" },
                check_says.trim(),
                if served { "accepted" } else { "refused" },
                serve_says.lines().last().unwrap_or_default().trim(),
            ));
        }
        // A refusal names the file.
        if !good {
            assert!(check_says.contains("hangar.toml"), "{name}: {check_says}");
            assert!(serve_says.contains("hangar.toml"), "{name}: {serve_says}");
        }
    }
    assert!(disagreements.is_empty(), "{}", disagreements.join("\n"));
}
