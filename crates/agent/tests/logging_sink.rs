//! Log lines fit where stderr goes: no colour codes in a pipe (what Sentinel captures from
//! `migrate-havip`) or with `NO_COLOR`, colour on a terminal, and under systemd's journal stream a `<N>`
//! priority prefix with no timestamp. Runs the real binary; a terminal comes from util-linux's `script`.

use std::os::unix::fs::MetadataExt;
use std::process::{Command, Stdio};

const ESC: char = '\u{1b}';

/// `migrate-havip` with a config that does not exist: it logs one error line and exits 2.
fn migrate() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_migrate-havip"));
    c.args([
        "--config",
        "/nonexistent/havip-agent-logging-test.toml",
        "--master",
        "mymaster",
        "--to",
        "198.18.0.1",
    ])
    .env_remove("JOURNAL_STREAM")
    .env_remove("NO_COLOR")
    .env_remove("HAVIP_LOG")
    .stdin(Stdio::null())
    .stdout(Stdio::null());
    c
}

/// Runs `cmd` with stderr on a fresh file (not a terminal, like Sentinel's capture); `journal` sets
/// `JOURNAL_STREAM` to that file's own device and inode (as systemd does for the journal's socket) or to
/// another inode.
fn run_on_file(mut cmd: Command, journal: Option<bool>) -> String {
    let file = tempfile::NamedTempFile::new().expect("temp file");
    let meta = file.as_file().metadata().expect("fstat");
    if let Some(matching) = journal {
        let ino = if matching { meta.ino() } else { meta.ino() + 1 };
        cmd.env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), ino));
    }
    let stderr = file.reopen().expect("reopen");
    let status = cmd.stderr(stderr).status().expect("run migrate-havip");
    let out = std::fs::read_to_string(file.path()).expect("read stderr");
    assert_eq!(status.code(), Some(2), "missing config is exit 2: {out}");
    out
}

fn log_lines(out: &str) -> Vec<&str> {
    out.lines().collect()
}

#[test]
fn a_failure_is_reported_once_in_the_log_format() {
    // Guards: the library logged the error and the binary printed it again, unformatted.
    for journal in [None, Some(true)] {
        let out = run_on_file(migrate(), journal);
        let reports = out
            .lines()
            .filter(|l| l.contains("cannot read config file"))
            .count();
        assert_eq!(reports, 1, "{out:?}");
        // Nor does the one line repeat its cause (an error that prints its source, then the chain again).
        assert_eq!(
            out.matches("No such file or directory").count(),
            1,
            "{out:?}"
        );
    }
    let mut json = migrate();
    json.args(["--log-format", "json"]);
    let out = run_on_file(json, None);
    let line = out
        .lines()
        .find(|l| l.contains("cannot read config file"))
        .unwrap_or_else(|| panic!("no error line: {out:?}"));
    let v: serde_json::Value = serde_json::from_str(line).expect("the error is a JSON log line");
    assert_eq!(v["level"], "ERROR", "{line}");
    assert_eq!(
        out.lines()
            .filter(|l| l.contains("cannot read config"))
            .count(),
        1
    );
}

#[test]
fn a_file_or_pipe_gets_plain_lines_with_a_timestamp() {
    let out = run_on_file(migrate(), None);
    let lines = log_lines(&out);
    assert!(!lines.is_empty(), "no log line: {out:?}");
    assert!(!out.contains(ESC), "colour codes off a terminal: {out:?}");
    assert!(
        lines[0].starts_with("20") && lines[0].contains("ERROR"),
        "timestamp then level: {out:?}"
    );
}

#[test]
fn the_journal_stream_gets_priorities_and_no_timestamp() {
    let out = run_on_file(migrate(), Some(true));
    let lines = log_lines(&out);
    assert!(!lines.is_empty(), "no log line: {out:?}");
    assert!(!out.contains(ESC), "colour codes in the journal: {out:?}");
    for l in &lines {
        assert!(
            l.starts_with("<3>") || l.starts_with("<4>") || l.starts_with("<6>"),
            "{l:?}"
        );
        assert!(
            !l[3..].starts_with("20"),
            "the journal keeps its own timestamp: {l:?}"
        );
    }
    assert!(
        lines.iter().any(|l| l.starts_with("<3>")),
        "the error is priority 3: {out:?}"
    );
}

#[test]
fn an_inherited_journal_stream_that_is_not_stderr_is_ignored() {
    let out = run_on_file(migrate(), Some(false));
    assert!(!out.contains("<3>"), "not the journal: {out:?}");
    assert!(!out.contains(ESC), "{out:?}");
}

/// Runs `cmd` under a pseudo-terminal (`script`), returning what the terminal showed.
fn run_on_terminal(no_color: bool) -> String {
    let bin = env!("CARGO_BIN_EXE_migrate-havip");
    let inner = format!(
        "{bin} --config /nonexistent/havip-agent-logging-test.toml --master mymaster --to 198.18.0.1"
    );
    let mut c = Command::new("script");
    c.args(["-q", "-e", "-c", &inner, "/dev/null"])
        .env_remove("JOURNAL_STREAM")
        .env_remove("HAVIP_LOG")
        .stdin(Stdio::null());
    if no_color {
        c.env("NO_COLOR", "1");
    } else {
        c.env_remove("NO_COLOR");
    }
    let out = c.output().unwrap_or_else(|e| {
        panic!("util-linux `script` is needed for a terminal (apt-get install bsdutils): {e}")
    });
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_terminal_gets_colour_unless_no_color() {
    let coloured = run_on_terminal(false);
    assert!(coloured.contains("ERROR"), "{coloured:?}");
    assert!(
        coloured.contains(ESC),
        "a terminal gets colour: {coloured:?}"
    );
    let plain = run_on_terminal(true);
    assert!(plain.contains("ERROR"), "{plain:?}");
    assert!(!plain.contains(ESC), "NO_COLOR: {plain:?}");
}
