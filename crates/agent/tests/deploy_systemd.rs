//! `deploy/havip-agent.service`, its tmpfiles.d entry and the redis-sentinel drop-in: checked by systemd's
//! own tools and by reading the settings that matter.

mod deploy_support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use deploy_support::{deploy, ensure_tool, one, parse_unit, run, text, verify_complaints, words};

/// The unit copied into a temp dir with ExecStart pointing at the binary this test run built, so that
/// `verify` can check that the command exists and is executable.
fn unit_for_verify(dir: &Path, edit: impl Fn(String) -> String) -> PathBuf {
    let unit = std::fs::read_to_string(deploy("havip-agent.service")).unwrap();
    let bin = env!("CARGO_BIN_EXE_havip-agent");
    let unit = unit.replace(
        "ExecStart=/usr/bin/havip-agent ",
        &format!("ExecStart={bin} "),
    );
    assert!(
        unit.contains(bin),
        "ExecStart no longer starts with /usr/bin/havip-agent"
    );
    let path = dir.join("havip-agent.service");
    std::fs::write(&path, edit(unit)).unwrap();
    path
}

#[test]
fn unit_passes_systemd_analyze_verify_without_warnings() {
    let dir = tempfile::tempdir().unwrap();
    let path = unit_for_verify(dir.path(), |u| u);
    let complaints = verify_complaints(&path, &["havip-agent"]);
    assert!(
        complaints.is_empty(),
        "systemd-analyze verify:\n{}",
        complaints.join("\n")
    );
}

// Guards the check above: systemd only warns about a misspelled key, and that warning must fail the test.
#[test]
fn verify_check_catches_a_misspelled_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = unit_for_verify(dir.path(), |u| {
        u.replace("NoNewPrivileges=yes", "NoNewPrivilege=yes")
    });
    let complaints = verify_complaints(&path, &["havip-agent"]);
    assert!(
        complaints.iter().any(|l| l.contains("NoNewPrivilege")),
        "a misspelled key went unnoticed: {complaints:?}"
    );
}

#[test]
fn unit_has_the_required_settings() {
    let unit = parse_unit(&std::fs::read_to_string(deploy("havip-agent.service")).unwrap());
    let s = "Service";
    assert_eq!(one(&unit, s, "Type"), "notify");
    assert_eq!(one(&unit, s, "NotifyAccess"), "main");
    let watchdog = humantime::parse_duration(one(&unit, s, "WatchdogSec")).unwrap();
    assert!(
        (2..=60).contains(&watchdog.as_secs()),
        "WatchdogSec {watchdog:?} should be seconds, not minutes"
    );
    assert_eq!(
        one(&unit, s, "ExecStart"),
        "/usr/bin/havip-agent run --config /etc/havip-agent/config.toml"
    );
    assert_eq!(one(&unit, s, "User"), "havip-agent");
    assert_eq!(one(&unit, s, "Group"), "havip-agent");
    let caps: BTreeSet<String> = ["CAP_NET_ADMIN", "CAP_NET_RAW"].map(String::from).into();
    for key in ["AmbientCapabilities", "CapabilityBoundingSet"] {
        let got: BTreeSet<String> = words(&unit, s, key).into_iter().collect();
        assert_eq!(got, caps, "{key}");
    }
    for (key, want) in [
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("Restart", "always"),
        ("RuntimeDirectory", "havip-agent"),
        ("RuntimeDirectoryMode", "3770"),
        ("RuntimeDirectoryPreserve", "yes"),
        ("RestartPreventExitStatus", "2"),
    ] {
        assert_eq!(one(&unit, s, key), want, "{key}");
    }
    let families: BTreeSet<String> = words(&unit, s, "RestrictAddressFamilies")
        .into_iter()
        .collect();
    let want: BTreeSet<String> = ["AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK", "AF_PACKET"]
        .map(String::from)
        .into();
    assert_eq!(families, want);
    let restart = humantime::parse_duration(one(&unit, s, "RestartSec")).unwrap();
    assert!(
        restart.as_secs() <= 5,
        "RestartSec {restart:?}: a VIP manager must come back fast"
    );
    assert_eq!(one(&unit, "Unit", "StartLimitIntervalSec"), "0");
    assert_eq!(one(&unit, "Install", "WantedBy"), "multi-user.target");
}

// Issue 11: about 1000 idle clients used to exhaust a 1024-descriptor soft limit, and a watchdog abort could
// dump core with the cloud keys in it.
#[test]
fn unit_raises_the_descriptor_limit_and_forbids_core_dumps() {
    let unit = parse_unit(&std::fs::read_to_string(deploy("havip-agent.service")).unwrap());
    let nofile = one(&unit, "Service", "LimitNOFILE");
    // `soft:hard` or one value for both; each must be a number, at least 65536.
    for part in nofile.split(':') {
        let n: u64 = part
            .parse()
            .unwrap_or_else(|_| panic!("LimitNOFILE={nofile}: not a number"));
        assert!(n >= 65536, "LimitNOFILE={nofile}: below 65536");
    }
    assert_eq!(one(&unit, "Service", "LimitCORE"), "0");
}

#[test]
fn unit_exposure_score_stays_low() {
    let tool = ensure_tool("systemd-analyze", "systemd");
    let dir = tempfile::tempdir().unwrap();
    let path = unit_for_verify(dir.path(), |u| u);
    let out = run(Command::new(tool)
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(&path));
    let all = text(&out);
    let score: f64 = all
        .lines()
        .find_map(|l| l.split_once("Overall exposure level for havip-agent.service: "))
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{all}"));
    // 0 is perfect, 10 is unprotected; systemd calls < 4.5 "OK". The unit scored 2.2 when written.
    assert!(
        score <= 3.0,
        "exposure {score} (hardening was lost?):\n{all}"
    );
}

#[test]
fn lock_directory_agrees_across_unit_tmpfiles_and_config_default() {
    let unit = parse_unit(&std::fs::read_to_string(deploy("havip-agent.service")).unwrap());
    let tmpfile = std::fs::read_to_string(deploy("havip-agent.tmpfile")).unwrap();
    let entry: Vec<&str> = tmpfile
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .flat_map(str::split_whitespace)
        .collect();
    assert_eq!(
        entry,
        [
            "d",
            "/run/havip-agent",
            "3770",
            "havip-agent",
            "havip-agent",
            "-"
        ]
    );
    let lock_dir = havip_agent::config::ClaimConfig::default().lock_dir;
    assert_eq!(
        lock_dir,
        Path::new("/run").join(one(&unit, "Service", "RuntimeDirectory"))
    );
    assert_eq!(one(&unit, "Service", "RuntimeDirectoryMode"), entry[2]);
}

/// Debian's redis-sentinel unit with our drop-in beside it, as systemd would merge them.
fn sentinel_with_dropin(dir: &Path, with_dropin: bool) -> PathBuf {
    let debian_unit = Path::new("/lib/systemd/system/redis-sentinel.service");
    if !debian_unit.exists() {
        ensure_tool("redis-sentinel", "redis-sentinel");
    }
    assert!(
        debian_unit.exists(),
        "{} is missing: apt-get install redis-sentinel",
        debian_unit.display()
    );
    let unit = dir.join("redis-sentinel.service");
    std::fs::copy(debian_unit, &unit).unwrap();
    if with_dropin {
        let d = dir.join("redis-sentinel.service.d");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::copy(
            deploy("redis-sentinel.service.d/havip-agent.conf"),
            d.join("havip-agent.conf"),
        )
        .unwrap();
    }
    unit
}

#[test]
fn sentinel_dropin_verifies_against_debians_unit() {
    let dir = tempfile::tempdir().unwrap();
    let unit = sentinel_with_dropin(dir.path(), true);
    let complaints = verify_complaints(&unit, &["havip-agent.conf"]);
    assert!(
        complaints.is_empty(),
        "systemd-analyze verify:\n{}",
        complaints.join("\n")
    );

    let dropin = parse_unit(
        &std::fs::read_to_string(deploy("redis-sentinel.service.d/havip-agent.conf")).unwrap(),
    );
    let s = "Service";
    assert_eq!(words(&dropin, s, "ExecPaths"), ["/usr/bin/migrate-havip"]);
    assert_eq!(words(&dropin, s, "SupplementaryGroups"), ["havip-agent"]);
}

// Issue 11: the drop-in grants Sentinel nothing. migrate-havip hands Sentinel's calls to the daemon over
// its control socket, so Sentinel needs no capability, system call, address family, writable path or
// credential: the drop-in may only let it execute migrate-havip and join the group that reaches the socket.
#[test]
fn sentinel_dropin_grants_no_capability_and_sets_only_the_group_and_the_exec_path() {
    let text =
        std::fs::read_to_string(deploy("redis-sentinel.service.d/havip-agent.conf")).unwrap();
    let dropin = parse_unit(&text);
    let keys: BTreeSet<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with('['))
        .filter_map(|l| l.split_once('=').map(|(k, _)| k.trim()))
        .collect();
    assert_eq!(
        keys,
        BTreeSet::from(["ExecPaths", "SupplementaryGroups"]),
        "the drop-in sets more than it may"
    );
    for key in [
        "AmbientCapabilities",
        "CapabilityBoundingSet",
        "SystemCallFilter",
        "RestrictAddressFamilies",
        "ReadWritePaths",
        "PrivateUsers",
        "EnvironmentFile",
        "Environment",
    ] {
        assert!(
            words(&dropin, "Service", key).is_empty(),
            "the drop-in sets {key}: {:?}",
            words(&dropin, "Service", key)
        );
    }
}

// What systemd's own security report shows with and without the drop-in (list settings merge, booleans
// override): the drop-in adds the supplementary group and nothing else that the report scores.
#[test]
fn sentinel_dropin_changes_nothing_in_debians_sandbox_but_the_group() {
    let tool = ensure_tool("systemd-analyze", "systemd");
    let report = |with_dropin: bool| {
        let dir = tempfile::tempdir().unwrap();
        let unit = sentinel_with_dropin(dir.path(), with_dropin);
        text(&run(Command::new(&tool)
            .args(["security", "--offline=yes", "--no-pager"])
            .arg(&unit)))
    };
    let without = report(false);
    let with = report(true);
    let failed = |r: &str| -> BTreeSet<String> {
        r.lines()
            .map(str::trim)
            .filter(|l| l.starts_with('✗'))
            .map(|l| l.split_whitespace().nth(1).unwrap_or_default().to_owned())
            .collect()
    };
    let added: Vec<String> = failed(&with)
        .difference(&failed(&without))
        .cloned()
        .collect();
    assert_eq!(added, ["SupplementaryGroups="], "with the drop-in:\n{with}");
    // The lines the old drop-in (ambient capabilities) failed stay passed.
    for line in [
        "✗ AmbientCapabilities=",
        "✗ CapabilityBoundingSet=~CAP_NET_ADMIN",
        "✗ RestrictAddressFamilies=~AF_PACKET",
        "✗ RestrictAddressFamilies=~AF_NETLINK",
        "✗ PrivateUsers=",
    ] {
        assert!(!with.contains(line), "the drop-in grants {line}:\n{with}");
    }
}
