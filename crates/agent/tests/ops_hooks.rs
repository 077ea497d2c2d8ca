//! `[hooks]`: arguments and environment, timeouts that kill the whole hook, order, and a caller that never
//! waits.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use havip_agent::config::{Dur, HooksConfig};
use havip_agent::hooks::{HookContext, Hooks};
use havip_agent::metrics::Metrics;

/// Generous bound for things that should take milliseconds; a test fails, not hangs, if it passes.
const DEADLINE: Duration = Duration::from_secs(20);

fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

fn ctx(havip: &str, result: &str) -> HookContext {
    HookContext {
        havip: havip.into(),
        vip: "198.18.0.250/24".into(),
        master: "mymaster".into(),
        result: result.into(),
        failover_id: "f-42".into(),
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Whether a process is gone (or a zombie nobody reaped yet, which runs no code either).
fn process_gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z')),
    }
}

#[tokio::test]
async fn hook_receives_arguments_and_environment() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let hook = script(
        dir.path(),
        "acquired.sh",
        &format!(
            "{{ echo \"args:$*\"; echo \"env:$HAVIP_EVENT|$HAVIP_ID|$HAVIP_VIP|$HAVIP_MASTER|$HAVIP_RESULT|$HAVIP_FAILOVER_ID\"; \
             }} > {}",
            out.display()
        ),
    );
    let hooks = Hooks::new(&HooksConfig {
        on_acquire: Some(hook),
        on_release: None,
        timeout: Dur::from_secs(10),
    });

    hooks.acquired(ctx("havip-11111111", "ok"));
    assert!(hooks.flush(DEADLINE).await, "hook did not finish");

    let text = read(&out);
    assert!(
        text.contains("args:acquired havip-11111111 198.18.0.250/24 mymaster ok\n"),
        "{text}"
    );
    assert!(
        text.contains("env:acquired|havip-11111111|198.18.0.250/24|mymaster|ok|f-42\n"),
        "{text}"
    );
}

#[tokio::test]
async fn hanging_hook_is_killed_with_its_children_and_the_next_hook_still_runs() {
    let dir = tempfile::tempdir().unwrap();
    let pids = dir.path().join("pids");
    let released = dir.path().join("released");
    let hang = script(
        dir.path(),
        "hang.sh",
        &format!("sleep 1000 &\necho \"$$ $!\" > {}\nwait", pids.display()),
    );
    let next = script(
        dir.path(),
        "next.sh",
        &format!("echo \"$1 $2\" > {}", released.display()),
    );
    let metrics = Metrics::new();
    let hooks = Hooks::with_metrics(
        &HooksConfig {
            on_acquire: Some(hang),
            on_release: Some(next),
            timeout: Dur::from_millis(300),
        },
        metrics.clone(),
    );

    hooks.acquired(ctx("havip-1", "ok"));
    hooks.released(ctx("havip-1", "ok"));
    assert!(hooks.flush(DEADLINE).await, "hooks did not finish");

    let text = read(&pids);
    let both: Vec<i32> = text
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    assert_eq!(both.len(), 2, "hang.sh did not record its pids: {text:?}");
    for pid in both {
        wait_for(&format!("process {pid} to be killed"), || process_gone(pid)).await;
    }
    assert_eq!(read(&released), "released havip-1\n");
    assert_eq!(
        metrics.value("havip_agent_hook_failures_total", &[("event", "acquired")]),
        Some(1.0)
    );
    assert_eq!(
        metrics.value("havip_agent_hook_failures_total", &[("event", "released")]),
        None
    );
}

#[tokio::test]
async fn submitting_returns_while_a_hook_hangs_and_hooks_run_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let gate = dir.path().join("gate");
    // The acquire hook cannot finish before the test creates the gate file.
    let acquire = script(
        dir.path(),
        "acquire.sh",
        &format!(
            "echo \"start $1\" >> {log}\nwhile [ ! -e {gate} ]; do sleep 0.01; done\necho \"end $1\" >> {log}",
            log = log.display(),
            gate = gate.display()
        ),
    );
    let release = script(
        dir.path(),
        "release.sh",
        &format!("echo \"run $1 $5\" >> {}", log.display()),
    );
    let hooks = Hooks::new(&HooksConfig {
        on_acquire: Some(acquire),
        on_release: Some(release),
        timeout: Dur::from_secs(60),
    });

    // Act: submit while nothing can finish.
    hooks.acquired(ctx("havip-1", "ok"));
    // The call returned although the hook cannot have finished (the gate does not exist yet).
    assert!(!read(&log).contains("end"));
    wait_for("the acquire hook to start", || read(&log).contains("start")).await;
    // While the first hook is known to be hanging, a second submit returns too.
    hooks.released(ctx("havip-1", "demoted"));
    assert_eq!(read(&log), "start acquired\n");

    std::fs::write(&gate, "").unwrap();
    assert!(hooks.flush(DEADLINE).await, "hooks did not finish");
    assert_eq!(
        read(&log),
        "start acquired\nend acquired\nrun released demoted\n"
    );
}

#[tokio::test]
async fn full_queue_drops_and_counts_instead_of_blocking() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let gate = dir.path().join("gate");
    let hook = script(
        dir.path(),
        "hook.sh",
        &format!(
            "echo \"start $5\" >> {log}\nwhile [ ! -e {gate} ]; do sleep 0.01; done",
            log = log.display(),
            gate = gate.display()
        ),
    );
    let metrics = Metrics::new();
    let hooks = Hooks::with_options(
        &HooksConfig {
            on_acquire: Some(hook),
            on_release: None,
            timeout: Dur::from_secs(60),
        },
        Some(metrics.clone()),
        1,
    );

    hooks.acquired(ctx("havip-1", "first"));
    wait_for("the first hook to start", || read(&log).contains("start")).await;
    // The worker is busy with "first": "second" fills the one-slot queue, "third" is dropped.
    hooks.acquired(ctx("havip-1", "second"));
    hooks.acquired(ctx("havip-1", "third"));
    assert_eq!(
        metrics.value("havip_agent_hook_dropped_total", &[("event", "acquired")]),
        Some(1.0)
    );

    std::fs::write(&gate, "").unwrap();
    assert!(hooks.flush(DEADLINE).await, "hooks did not finish");
    assert_eq!(read(&log), "start first\nstart second\n");
}

#[tokio::test]
async fn failing_and_missing_hooks_are_counted_not_fatal() {
    let dir = tempfile::tempdir().unwrap();
    let fails = script(dir.path(), "fails.sh", "echo oops >&2\nexit 3");
    let metrics = Metrics::new();
    let hooks = Hooks::with_metrics(
        &HooksConfig {
            on_acquire: Some(fails),
            on_release: Some(dir.path().join("does-not-exist")),
            timeout: Dur::from_secs(10),
        },
        metrics.clone(),
    );

    hooks.acquired(ctx("havip-1", "ok"));
    hooks.released(ctx("havip-1", "ok"));
    assert!(hooks.flush(DEADLINE).await);

    for event in ["acquired", "released"] {
        assert_eq!(
            metrics.value("havip_agent_hook_failures_total", &[("event", event)]),
            Some(1.0),
            "{event}"
        );
    }
}

#[tokio::test]
async fn unconfigured_hooks_do_nothing() {
    let hooks = Hooks::new(&HooksConfig::default());
    hooks.acquired(ctx("havip-1", "ok"));
    hooks.released(ctx("havip-1", "ok"));
    assert!(hooks.flush(Duration::from_millis(1)).await);
}
