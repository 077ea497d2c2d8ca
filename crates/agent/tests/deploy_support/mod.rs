//! Shared by the `deploy_*` tests: finding (or, as root, installing) the tools they need, running
//! commands, and reading systemd unit files.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;

/// The product's package (`crates/agent`): its Cargo.toml holds the Debian package's metadata, whose paths
/// are relative to it.
pub fn package() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The repository root (the workspace).
pub fn repo() -> PathBuf {
    package()
        .join("../..")
        .canonicalize()
        .expect("the workspace root")
}

/// A file under `deploy/`.
pub fn deploy(rel: &str) -> PathBuf {
    repo().join("deploy").join(rel)
}

fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Serialises apt-get runs of parallel tests (dpkg holds a lock).
static APT: Mutex<()> = Mutex::new(());

/// The path of `tool`. If it is missing and we are root, installs the Debian `package` that has it;
/// otherwise fails naming what is missing.
pub fn ensure_tool(tool: &str, package: &str) -> PathBuf {
    if let Some(p) = which(tool) {
        return p;
    }
    assert!(
        is_root(),
        "{tool} is missing and this test is not root: apt-get install {package}"
    );
    let _guard = APT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(p) = which(tool) {
        return p;
    }
    let apt = |args: &[&str]| {
        let out = Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .output()
            .unwrap_or_else(|e| {
                panic!("{tool} is missing and apt-get cannot run ({e}): install {package}")
            });
        assert!(
            out.status.success(),
            "{tool} is missing and `apt-get {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    apt(&["update", "-qq"]);
    apt(&["install", "-y", "-qq", "--no-install-recommends", package]);
    which(tool).unwrap_or_else(|| panic!("installed {package} but {tool} is still missing"))
}

/// Runs a command and returns its output; panics if it cannot start.
pub fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// stdout and stderr together, lossily decoded.
pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A parsed unit file: section -> key -> every value assigned, in order (systemd keys may repeat).
pub type Unit = BTreeMap<String, BTreeMap<String, Vec<String>>>;

/// Parses systemd's ini dialect: `[Section]`, `Key=Value`, `#`/`;` comments, `\` continuations.
pub fn parse_unit(text: &str) -> Unit {
    let mut unit = Unit::new();
    let mut section = String::new();
    let mut pending = String::new();
    for raw in text.lines() {
        let line = raw.trim();
        if pending.is_empty() && (line.is_empty() || line.starts_with('#') || line.starts_with(';'))
        {
            continue;
        }
        if let Some(cont) = line.strip_suffix('\\') {
            pending.push_str(cont);
            pending.push(' ');
            continue;
        }
        let full = std::mem::take(&mut pending) + line;
        if let Some(name) = full.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
            section = name.to_owned();
            unit.entry(section.clone()).or_default();
            continue;
        }
        let (k, v) = full
            .split_once('=')
            .unwrap_or_else(|| panic!("not key=value in [{section}]: {full:?}"));
        unit.entry(section.clone())
            .or_default()
            .entry(k.trim().to_owned())
            .or_default()
            .push(v.trim().to_owned());
    }
    unit
}

/// The single value of `key` in `section`; panics if absent or repeated.
pub fn one<'a>(unit: &'a Unit, section: &str, key: &str) -> &'a str {
    let values = unit
        .get(section)
        .and_then(|s| s.get(key))
        .unwrap_or_else(|| panic!("[{section}] has no {key}="));
    assert_eq!(
        values.len(),
        1,
        "[{section}] {key}= is set {} times",
        values.len()
    );
    &values[0]
}

/// The space-separated words of every `key=` line in `section`, merged.
pub fn words(unit: &Unit, section: &str, key: &str) -> Vec<String> {
    unit.get(section)
        .and_then(|s| s.get(key))
        .map(|vs| {
            vs.iter()
                .flat_map(|v| v.split_whitespace().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Runs `systemd-analyze verify` on `unit_path` and returns every line of its output that concerns one
/// of `ours` (file or unit names). systemd reports problems in a unit (unknown keys, bad values) as
/// warnings with exit status 0, so any such line counts as a failure.
pub fn verify_complaints(unit_path: &Path, ours: &[&str]) -> Vec<String> {
    let tool = ensure_tool("systemd-analyze", "systemd");
    let out = run(Command::new(tool)
        .args(["verify", "--man=no"])
        .arg(unit_path));
    let all = text(&out);
    let mut complaints: Vec<String> = all
        .lines()
        .filter(|l| ours.iter().any(|o| l.contains(o)))
        .map(str::to_owned)
        .collect();
    if !out.status.success() {
        complaints.push(format!(
            "systemd-analyze verify failed ({}): {all}",
            out.status
        ));
    }
    complaints
}
