//! `deploy/sentinel.conf.snippet`: its directives, with the path pointed at the built `migrate-havip`, are
//! accepted by a real `redis-sentinel` (which refuses the whole config on a bad directive or a script it
//! cannot execute).

mod deploy_support;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use deploy_support::{deploy, ensure_tool};

/// Kills the Sentinel when the test ends, passing or not.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The snippet's directive lines (comments and blanks dropped), with `/usr/bin/migrate-havip` replaced by
/// `script`.
fn snippet_directives(script: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(deploy("sentinel.conf.snippet")).unwrap();
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.replace("/usr/bin/migrate-havip", &script.display().to_string()))
        .collect()
}

/// Starts `redis-sentinel` on a config of a monitor line plus `directives`; returns the process once it
/// answers PING, or its exit status and output if it stopped first.
fn start_sentinel(dir: &Path, directives: &[String]) -> Result<(Proc, u16), String> {
    let sentinel = ensure_tool("redis-sentinel", "redis-sentinel");
    let port = free_port();
    let master_port = free_port(); // nothing listens there: the master stays down, which is fine here
    let conf = dir.join("sentinel.conf");
    std::fs::write(
        &conf,
        format!(
            "port {port}\nbind 127.0.0.1\ndaemonize no\ndir {}\nsentinel monitor mymaster 127.0.0.1 {master_port} 2\n{}\n",
            dir.display(),
            directives.join("\n")
        ),
    )
    .unwrap();
    let log = dir.join("sentinel.log");
    let mut child = Proc(
        Command::new(sentinel)
            .arg(&conf)
            .stdout(Stdio::from(std::fs::File::create(&log).unwrap()))
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Some(status) = child.0.try_wait().unwrap() {
            return Err(format!(
                "redis-sentinel exited ({status}): {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            ));
        }
        let pong = redis::Client::open(format!("redis://127.0.0.1:{port}/"))
            .and_then(|c| c.get_connection_with_timeout(Duration::from_millis(200)))
            .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c));
        if pong.is_ok() {
            return Ok((child, port));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err("redis-sentinel did not answer PING within 20 s".into())
}

#[test]
fn a_real_sentinel_accepts_the_snippet_with_migrate_havip_as_both_scripts() {
    let script = Path::new(env!("CARGO_BIN_EXE_migrate-havip"));
    let directives = snippet_directives(script);
    for want in [
        "sentinel client-reconfig-script mymaster",
        "sentinel notification-script mymaster",
    ] {
        assert!(
            directives.iter().any(|d| d.starts_with(want)),
            "the snippet lacks `{want} ...`: {directives:?}"
        );
    }
    let dir = tempfile::tempdir().unwrap();

    let (_sentinel, port) = start_sentinel(dir.path(), &directives).unwrap();

    // Sentinel rewrote its config on start: both scripts are part of its state.
    let mut c = redis::Client::open(format!("redis://127.0.0.1:{port}/"))
        .unwrap()
        .get_connection()
        .unwrap();
    let _: () = redis::cmd("SENTINEL")
        .arg("FLUSHCONFIG")
        .query(&mut c)
        .unwrap();
    let rewritten = std::fs::read_to_string(dir.path().join("sentinel.conf")).unwrap();
    for want in ["client-reconfig-script", "notification-script"] {
        let line = format!("sentinel {want} mymaster {}", script.display());
        assert!(rewritten.contains(&line), "no `{line}` in:\n{rewritten}");
    }
}

#[test]
fn the_same_check_fails_when_the_script_path_does_not_exist() {
    // The control: proves a real Sentinel rejects a bad script line, so the test above can fail.
    let directives = snippet_directives(Path::new("/nonexistent/migrate-havip"));
    let dir = tempfile::tempdir().unwrap();
    let err = start_sentinel(dir.path(), &directives)
        .map(|_| ())
        .unwrap_err();
    assert!(err.contains("exited"), "{err}");
}
