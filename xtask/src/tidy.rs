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
    for file in rust_files(root)? {
        check_source(root, &file, &mut problems)?;
    }
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
    let is_test_file = is_test_half || shown.contains("/tests/") || shown.contains("/benches/");
    if !is_test_file && !shown.ends_with("tidy.rs") && runs_a_shell(&text) {
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
}
