//! `deploy/config.example.toml` is a contract: it parses, and it documents every key the agent accepts.

use std::path::Path;

use havip_agent::config::Config;

const EXAMPLE: &str = include_str!("../../../deploy/config.example.toml");

/// The example with every commented-out `# key = value` and `# [table]` line turned on.
fn fully_uncommented() -> String {
    EXAMPLE
        .lines()
        .map(|l| {
            let body = l.strip_prefix("# ").unwrap_or(l);
            let is_setting = body.starts_with('[')
                || body.split_once(" = ").is_some_and(|(k, _)| {
                    !k.is_empty() && k.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                });
            if l.starts_with("# ") && is_setting {
                body.to_owned()
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The keys a table accepts, read from the "expected one of ..." message of an unknown key.
fn accepted_keys(text: &str, header: &str) -> Vec<String> {
    let probe = text.replacen(header, &format!("{header}\nzz_not_a_key = 1"), 1);
    let err = Config::parse_str(&probe, Path::new("example.toml"))
        .expect_err("unknown key must be rejected")
        .to_string();
    // serde says "expected `a`", "expected `a` or `b`" or "expected one of `a`, `b`, ...".
    let list = err
        .split("expected")
        .nth(1)
        .unwrap_or_else(|| panic!("no key list in {err}"));
    list.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

#[test]
fn example_config_parses_as_shipped() {
    let c = Config::parse_str(EXAMPLE, Path::new("deploy/config.example.toml")).unwrap();
    assert_eq!(c.havips.len(), 1);
    assert_eq!(c.sentinel.addresses.len(), 3);
}

#[test]
fn example_config_parses_with_every_optional_key_turned_on() {
    let text = fully_uncommented();
    let c = Config::parse_str(&text, Path::new("uncommented.toml"))
        .unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert!(c.redis.is_some() && c.sentinel.tls.is_some() && c.metrics.listen.is_some());
    assert_eq!(c.alerts.len(), 1);
    assert!(c.hooks.on_acquire.is_some() && c.cloud.secret_key.is_some());
}

#[test]
fn example_config_documents_every_key_of_every_table() {
    let text = fully_uncommented();
    let tables = [
        "[cloud]",
        "[node]",
        "[sentinel]",
        "[sentinel.tls]",
        "[redis]",
        "[[havip]]",
        "[claim]",
        "[announce]",
        "[agent]",
        "[metrics]",
        "[hooks]",
        "[[alert]]",
    ];
    for header in tables {
        assert!(text.contains(header), "example lacks {header}");
        for key in accepted_keys(&text, header) {
            let documented = text
                .lines()
                .any(|l| l.trim_start().starts_with(&format!("{key} =")));
            assert!(
                documented,
                "{header} key {key:?} is not documented in deploy/config.example.toml"
            );
        }
    }
    // Top level: every table the config accepts appears in the example.
    for key in accepted_keys(&format!("zz_top = 1\n{text}"), "zz_top = 1") {
        let documented = text.contains(&format!("[{key}]")) || text.contains(&format!("[[{key}]]"));
        assert!(documented, "table {key:?} is not documented");
    }
}
