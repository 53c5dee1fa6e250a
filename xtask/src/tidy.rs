//! Architecture invariants that a command can check (see ARCHITECTURE.md).
//!
//! Each check reads files as text: cheap, and failures print the file and
//! the rule. A rule that cannot be checked here is written in
//! ARCHITECTURE.md instead.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};

/// Crates allowed to depend on a given crate in `[dependencies]`.
const ONLY: &[(&str, &[&str])] = &[
    // Only the store holds SQL.
    ("sqlx", &["store"]),
    // HTTP serving lives at the edges (the simulator is a test and demo double).
    ("axum", &["server", "hangar", "cache", "simulator"]),
];

/// `types` is the vocabulary: no IO, no async, no workspace crates.
const TYPES_MAY_USE: &[&str] = &["chrono", "humantime", "serde", "thiserror"];

pub(crate) fn run(root: &Path) -> Result<()> {
    let mut problems = Vec::new();
    for manifest in manifests(root)? {
        check_manifest(root, &manifest, &mut problems)?;
    }
    let mut declared = Vec::new();
    for file in rust_files(root)? {
        check_source(root, &file, &mut problems)?;
        if file.file_name().is_some_and(|n| n == "metrics.rs") {
            declared.extend(metric_names(&std::fs::read_to_string(&file)?));
        }
    }
    check_metrics_doc(root, &declared, &mut problems)?;
    if !problems.is_empty() {
        for problem in &problems {
            eprintln!("tidy: {problem}");
        }
        bail!("{} tidy problem(s)", problems.len());
    }
    eprintln!("xtask: tidy: ok");
    Ok(())
}

fn manifests(root: &Path) -> Result<Vec<PathBuf>> {
    let mut found = vec![root.join("xtask/Cargo.toml")];
    for entry in std::fs::read_dir(root.join("crates"))? {
        let manifest = entry?.path().join("Cargo.toml");
        if manifest.exists() {
            found.push(manifest);
        }
    }
    found.sort();
    Ok(found)
}

/// The names in one `[table]` of a manifest.
fn table_keys<'a>(text: &'a str, table: &str) -> Vec<&'a str> {
    let mut inside = false;
    let mut keys = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            inside = line == table;
        } else if inside && !line.is_empty() && !line.starts_with('#') {
            let key = line.split(['=', '.', ' ']).next().unwrap_or("").trim();
            keys.push(key);
        }
    }
    keys
}

fn check_manifest(root: &Path, manifest: &Path, problems: &mut Vec<String>) -> Result<()> {
    let text = std::fs::read_to_string(manifest)?;
    let shown = manifest.strip_prefix(root).unwrap_or(manifest).display().to_string();
    let krate = manifest.parent().and_then(Path::file_name).and_then(|n| n.to_str()).unwrap_or("");
    let deps = table_keys(&text, "[dependencies]");
    for (dependency, allowed) in ONLY {
        if deps.contains(dependency) && !allowed.contains(&krate) {
            problems.push(format!(
                "{shown}: `{krate}` must not depend on `{dependency}` (allowed: {allowed:?})"
            ));
        }
    }
    if krate == "types" {
        for dep in deps.iter().filter(|d| !TYPES_MAY_USE.contains(d)) {
            problems.push(format!("{shown}: `types` does no IO and depends on nothing but {TYPES_MAY_USE:?}, not `{dep}`"));
        }
    }
    for line in text.lines().filter(|l| l.contains("{ path =") && !l.contains("version =")) {
        problems.push(format!("{shown}: path dependency without a version: {}", line.trim()));
    }
    if !text.contains("[lints]") {
        problems.push(format!("{shown}: missing `[lints] workspace = true`"));
    }
    Ok(())
}

fn rust_files(root: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let mut stack = vec![root.join("crates"), root.join("xtask")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if path.is_dir() && name != "target" && name != "node_modules" {
                stack.push(path);
            } else if name.ends_with(".rs") {
                files.push(path);
            }
        }
    }
    files.sort();
    Ok(files)
}

fn check_source(root: &Path, file: &Path, problems: &mut Vec<String>) -> Result<()> {
    let text = std::fs::read_to_string(file)?;
    let shown = file.strip_prefix(root).unwrap_or(file).display().to_string();
    // `tests.rs` files are the test halves of a documented module.
    let is_test_half = file.file_name().is_some_and(|n| n == "tests.rs");
    if !is_test_half && !text.trim_start().starts_with("//!") {
        problems.push(format!("{shown}: every file opens with a `//!` doc saying what it is"));
    }
    let test_file = is_test_file(&shown);
    if !test_file && !shown.ends_with("tidy.rs") && runs_a_shell(&text) {
        problems.push(format!(
            "{shown}: no shell (`sh -c`) outside tests: a pipeline's failing stage is lost; run \
             each program with `hangar_exec` (or write the stage in Rust)"
        ));
    }
    for banned in ["#[ignore", "#[should_panic"] {
        if text.contains(banned) && !shown.ends_with("tidy.rs") {
            problems.push(format!(
                "{shown}: `{banned}]` is not used here: assert the behaviour instead"
            ));
        }
    }
    // This file spells the patterns it looks for.
    if test_file || shown.ends_with("tidy.rs") {
        return Ok(());
    }
    let lines = non_test_lines(&text);
    let is_metrics_list = file.file_name().is_some_and(|n| n == "metrics.rs");
    for (index, (number, line)) in lines.iter().enumerate() {
        let next = lines.get(index + 1).map_or("", |(_, l)| *l);
        if !is_metrics_list && let Some(call) = literal_metric_name(line, next) {
            problems.push(format!(
                "{shown}:{number}: `{call}` names a metric with a literal: declare it in the \
                 crate's `metrics.rs` and use the constant"
            ));
        }
    }
    for (number, line) in lines {
        if let Some(field) = bare_error_field(line) {
            problems.push(format!(
                "{shown}:{number}: `{field}` logs only the outer message: log \
                 `error = %ErrorChain(&e)` (text that already holds a chain: `error = text.as_str()`)"
            ));
        }
    }
    Ok(())
}

/// Whether the non-test part of a source file (before its `#[cfg(test)]`)
/// starts a shell.
fn runs_a_shell(text: &str) -> bool {
    let code = text.split("#[cfg(test)]").next().unwrap_or(text);
    ["sh", "bash", "/bin/sh", "/bin/bash", "dash"]
        .iter()
        .any(|shell| code.contains(&format!("Command::new(\"{shell}\")")))
}

/// Integration tests, benches and `tests.rs` halves: not held to the
/// production logging rules.
fn is_test_file(shown: &str) -> bool {
    let shown = shown.replace('\\', "/");
    shown.ends_with("/tests.rs") || shown.contains("/tests/") || shown.contains("/benches/")
}

/// The lines of `text` outside `#[cfg(test)] mod … { … }` blocks, numbered
/// from 1. Brace counting is enough: the workspace is rustfmt-formatted.
fn non_test_lines(text: &str) -> Vec<(usize, &str)> {
    let mut kept = Vec::new();
    let mut cfg_test = false;
    let mut depth: Option<usize> = None;
    for (index, line) in text.lines().enumerate() {
        let trimmed = line.trim();
        if let Some(d) = depth.as_mut() {
            *d = (*d + line.matches('{').count()).saturating_sub(line.matches('}').count());
            if *d == 0 {
                depth = None;
            }
            continue;
        }
        if trimmed == "#[cfg(test)]" {
            cfg_test = true;
            continue;
        }
        if cfg_test && trimmed.starts_with("mod ") && trimmed.ends_with('{') {
            cfg_test = false;
            depth = Some(1);
            continue;
        }
        cfg_test = cfg_test && trimmed.starts_with("#[");
        kept.push((index + 1, line));
    }
    kept
}

/// The macros that record a metric.
const METRIC_MACROS: &[&str] = &["counter!(", "gauge!(", "histogram!("];

/// A `counter!("…")`-style call on `line` (its name possibly on `next`,
/// as rustfmt breaks long calls) whose name is a string literal.
fn literal_metric_name(line: &str, next: &str) -> Option<String> {
    for mac in METRIC_MACROS {
        for (at, _) in line.match_indices(mac) {
            let rest = line[at + mac.len()..].trim_start();
            let rest = if rest.is_empty() { next.trim_start() } else { rest };
            if rest.starts_with('"') {
                return Some(format!("{mac}{}", rest.split(['"']).nth(1).map_or("", |n| n)));
            }
        }
    }
    None
}

/// The metric names a `metrics.rs` declares: `pub const X: &str = "hangar_…";`.
fn metric_names(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|line| line.trim().strip_prefix("pub const ")?.split_once(": &str = \""))
        .filter_map(|(_, rest)| rest.strip_suffix("\";"))
        .map(str::to_owned)
        .collect()
}

/// `docs/metrics.md` lists every declared metric, and nothing else.
fn check_metrics_doc(root: &Path, declared: &[String], problems: &mut Vec<String>) -> Result<()> {
    let doc = std::fs::read_to_string(root.join("docs/metrics.md")).unwrap_or_default();
    for name in declared {
        if !doc.contains(&format!("| `{name}` |")) {
            problems.push(format!(
                "docs/metrics.md: `{name}` is missing: run \
                 `HANGAR_BLESS=1 cargo test -p hangar --lib metrics` (and list the crate \
                 in crates/hangar/src/metrics.rs)"
            ));
        }
    }
    for line in doc.lines().filter(|l| l.starts_with("| `hangar_")) {
        let name = line.split('`').nth(1).unwrap_or("");
        if !declared.iter().any(|d| d == name) {
            problems.push(format!("docs/metrics.md: `{name}` is not declared in any metrics.rs"));
        }
    }
    Ok(())
}

/// The tracing fields that hold an error.
const ERROR_FIELDS: &[&str] = &["error", "err"];

/// The first `error = %expr`, `error = ?expr`, `%error` or `?error` field on
/// `line` whose value is not an `ErrorChain`, if any.
fn bare_error_field(line: &str) -> Option<String> {
    let ident = |c: char| c.is_alphanumeric() || c == '_' || c == '.';
    for field in ERROR_FIELDS {
        for sigil in ['%', '?'] {
            let assigned = format!("{field} = {sigil}");
            for (at, _) in line.match_indices(&assigned) {
                let is_field = !line[..at].ends_with(ident);
                let value = &line[at + assigned.len()..];
                if is_field && !value.starts_with("ErrorChain(") {
                    let end = value.find([',', ')']).unwrap_or(value.len());
                    return Some(format!("{assigned}{}", &value[..end]));
                }
            }
            let shorthand = format!("{sigil}{field}");
            for (at, _) in line.match_indices(&shorthand) {
                let before = line[..at].chars().next_back();
                let after = line[at + shorthand.len()..].chars().next();
                if matches!(before, Some('(' | ' ')) && matches!(after, Some(',' | ')')) {
                    return Some(shorthand);
                }
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shell_outside_tests_is_found() {
        let q = '"';
        let shell = format!("fn f() {{ Command::new({q}sh{q}).arg({q}-c{q}); }}");
        assert!(runs_a_shell(&shell));
        assert!(runs_a_shell(&shell.replace("sh", "/bin/bash")));
        assert!(!runs_a_shell(&format!("fn f() {{}}\n#[cfg(test)]\nmod tests {{ {shell} }}")));
        assert!(!runs_a_shell(&shell.replace("sh", "cpio")));
    }

    #[test]
    fn error_fields_must_carry_the_whole_chain() {
        let bare = [
            (r#"tracing::warn!(error = %e, "failed");"#, "error = %e"),
            (r#"tracing::error!(error = ?self.1, "failed");"#, "error = ?self.1"),
            (r#"warn!(vm = %id, err = %err, "x")"#, "err = %err"),
            (r#"tracing::warn!(%error, "stopped");"#, "%error"),
            (r#"tracing::debug!(?err, attempt)"#, "?err"),
            ("    error = %source,", "error = %source"),
        ];
        for (line, field) in bare {
            assert_eq!(bare_error_field(line).as_deref(), Some(field), "{line}");
        }
        let fine = [
            r#"tracing::warn!(error = %ErrorChain(&e), "failed");"#,
            "    error = %ErrorChain(&error),",
            r#"tracing::warn!(error = error.as_str(), "x")"#,
            r#"tracing::info!(%error_count, ?errors, "x")"#,
            r#"tracing::info!(io_error = %e, "x")"#,
            "let error = parse(text).unwrap_err();",
        ];
        for line in fine {
            assert_eq!(bare_error_field(line), None, "{line}");
        }
    }

    #[test]
    fn metric_names_come_from_constants() {
        let literal = [
            (r#"metrics::counter!("hangar_x_total").increment(1);"#, ""),
            (r#"metrics::gauge!("hangar_jobs", "state" => s).set(1.0);"#, ""),
            ("    metrics::counter!(", r#"        "hangar_webhook_deliveries_total","#),
            (r#"histogram!( "hangar_y_seconds")"#, ""),
        ];
        for (line, next) in literal {
            assert!(literal_metric_name(line, next).is_some(), "{line}");
        }
        let constant = [
            ("metrics::counter!(crate::metrics::REDELIVERIES).increment(1);", ""),
            ("    metrics::counter!(", "        WEBHOOK_DELIVERIES,"),
        ];
        for (line, next) in constant {
            assert_eq!(literal_metric_name(line, next), None, "{line}");
        }
        let declared = metric_names(
            "pub const JOBS: &str = \"hangar_jobs\";\nconst PRIVATE: &str = \"x\";\npub const ALL: &[Metric] = &[];\n",
        );
        assert_eq!(declared, ["hangar_jobs"]);
    }

    #[test]
    fn test_modules_are_skipped_and_lines_keep_their_numbers() {
        let text = "fn a() {}\n#[cfg(test)]\nmod tests {\n    fn b() {\n    }\n}\nfn c() {}\n";
        assert_eq!(non_test_lines(text), vec![(1, "fn a() {}"), (7, "fn c() {}")]);
        let gated_item = "#[cfg(test)]\nfn helper() {}\nfn d() {}\n";
        assert_eq!(non_test_lines(gated_item).len(), 2, "only modules are skipped");
        assert!(is_test_file("crates/x/tests/it/main.rs"));
        assert!(is_test_file("crates/x/src/plan/tests.rs"));
        assert!(!is_test_file("crates/x/src/tests_support.rs"));
    }
}
