//! `havip-agent check` end to end: the real binary against the fake cloud, the fake metadata service and a
//! real Sentinel lab on loopback. Healthy means exit 0; every problem is one named line and exit 2; no secret
//! or token ever appears in what it prints or logs.

use std::path::Path;
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use havip_testkit::fake::{FakeCloud, FakeMetadata, HavipSpec, MetadataSpec, RoleCredentials};
use havip_testkit::testbed::redis::{LabSpec, RedisLab};

const ID: &str = "AKIDcheckEXAMPLE0001";
const KEY: &str = "checkSecretKeyVerySecret0001";
const TMP_ID: &str = "AKIDtmpRoleEXAMPLE0002";
const TMP_KEY: &str = "tmpRoleSecretKeyVerySecret0002";
const TOKEN: &str = "tokenRoleVerySecret0003";

struct World {
    cloud: FakeCloud,
    metadata: FakeMetadata,
    lab: RedisLab,
    dir: tempfile::TempDir,
}

async fn world() -> World {
    let cloud = FakeCloud::start().await;
    cloud.add_key(ID, KEY);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    cloud.add_temporary_key(TMP_ID, TMP_KEY, TOKEN);
    cloud.add_havip(
        HavipSpec::new("havip-check001", "198.18.0.100".parse().unwrap())
            .check_associate(true)
            .associate("ins-check"),
    );
    let metadata = FakeMetadata::start(
        MetadataSpec::new(
            "ins-check",
            "198.18.0.11".parse().unwrap(),
            [2, 0, 0, 0, 0, 1],
        )
        .with_role(RoleCredentials::new(
            "havip-role",
            TMP_ID,
            TMP_KEY,
            TOKEN,
            now + 3600,
        )),
    )
    .await;
    let lab = RedisLab::start(LabSpec::default())
        .await
        .expect("redis lab");
    World {
        cloud,
        metadata,
        lab,
        dir: tempfile::tempdir().unwrap(),
    }
}

fn config(w: &World, extra_cloud: &str, sentinels: &[String]) -> std::path::PathBuf {
    config_with(w, extra_cloud, "", sentinels, "")
}

/// [`config`] with extra `[node]` keys and text after the `[[havip]]` entry (its keys, then more tables).
fn config_with(
    w: &World,
    extra_cloud: &str,
    extra_node: &str,
    sentinels: &[String],
    tail: &str,
) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let list: Vec<String> = sentinels.iter().map(|a| format!("\"{a}\"")).collect();
    let text = format!(
        "[cloud]\nregion = \"ap-guangzhou\"\nendpoint = \"{}\"\nmetadata_endpoint = \"{}\"\n{extra_cloud}\n\n[node]\ninterface = \"eth0\"\n{extra_node}\n\n[sentinel]\naddresses = [{}]\n\n[agent]\n# The control socket's directory and group exist on this host (check reports them otherwise).\ncontrol_socket = \"{}\"\ncontrol_group = \"root\"\n\n[[havip]]\nmaster = \"mymaster\"\nhavip_id = \"havip-check001\"\nvip = \"198.18.0.100/24\"\n{tail}\n",
        w.cloud.endpoint(),
        w.metadata.endpoint(),
        list.join(", "),
        w.dir.path().join("control.sock").display()
    );
    let path = w.dir.path().join(format!("c{}.toml", rand_suffix()));
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

fn rand_suffix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

/// Runs `havip-agent check` with the most verbose logs; returns (exit code, stdout + stderr).
fn check(path: &Path, env: &[(&str, &str)]) -> (i32, String) {
    let mut c = Command::new(env!("CARGO_BIN_EXE_havip-agent"));
    c.args(["check", "--config"]).arg(path);
    c.env_remove("TENCENTCLOUD_SECRET_ID")
        .env_remove("TENCENTCLOUD_SECRET_KEY")
        .env_remove("TENCENTCLOUD_TOKEN")
        .env("HAVIP_LOG", "trace");
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.output().expect("run havip-agent check");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

fn assert_no_secret(text: &str) {
    for s in [KEY, TMP_KEY, TOKEN] {
        assert!(
            !text.contains(s),
            "a secret leaked into check's output:\n{text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthy_setup_exits_zero_and_reports_everything_without_secrets() {
    let w = world().await;
    let path = config(&w, "", &w.lab.sentinel_addrs());
    let (code, out) = tokio::task::spawn_blocking(move || {
        check(
            &path,
            &[
                ("TENCENTCLOUD_SECRET_ID", ID),
                ("TENCENTCLOUD_SECRET_KEY", KEY),
            ],
        )
    })
    .await
    .unwrap();
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("credentials: environment"), "{out}");
    assert!(
        out.contains("node: instance ins-check address 198.18.0.11"),
        "{out}"
    );
    assert!(out.contains("havip-check001: vip 198.18.0.100"), "{out}");
    assert!(
        out.contains("drift-range limiting on this node in range yes"),
        "{out}"
    );
    assert_eq!(out.matches(": reachable (").count(), 3, "{out}");
    assert!(out.contains("mymaster at"), "{out}");
    // The fake listens on http://: the one warning, and no problem.
    let warnings: Vec<&str> = out.lines().filter(|l| l.starts_with("warning: ")).collect();
    assert_eq!(warnings.len(), 1, "{out}");
    assert!(
        warnings[0].starts_with("warning: cloud.endpoint http://127.0.0.1:")
            && warnings[0].contains("in clear"),
        "{out}"
    );
    assert!(!out.contains("problem: "), "{out}");
    assert!(
        out.contains("ok: no problems (1 warning(s) above)"),
        "{out}"
    );
    assert_no_secret(&out);
    assert!(w.cloud.requests().iter().all(|r| r.signature_valid));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cvm_role_credentials_are_used_and_the_token_never_printed() {
    let w = world().await;
    let path = config(&w, "", &w.lab.sentinel_addrs());
    let (code, out) = tokio::task::spawn_blocking(move || check(&path, &[]))
        .await
        .unwrap();
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("credentials: CVM role havip-role"), "{out}");
    assert_no_secret(&out);
    let r = w.cloud.requests();
    assert!(
        !r.is_empty()
            && r.iter()
                .all(|r| r.signature_valid && r.header("x-tc-token") == Some(TOKEN))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_problem_is_one_named_line_and_exit_two() {
    let w = world().await;
    let mut sentinels = w.lab.sentinel_addrs();
    sentinels.push("127.0.0.1:1".into());
    let path = config(&w, "", &sentinels);
    let (code, out) = tokio::task::spawn_blocking(move || {
        check(
            &path,
            &[
                ("TENCENTCLOUD_SECRET_ID", ID),
                ("TENCENTCLOUD_SECRET_KEY", "not-the-right-key"),
            ],
        )
    })
    .await
    .unwrap();
    assert_eq!(code, 2, "{out}");
    let problems: Vec<&str> = out.lines().filter(|l| l.starts_with("problem: ")).collect();
    assert!(
        problems.iter().any(|l| l
            .starts_with("problem: havip-check001: AuthFailure.SignatureFailure: ")
            && l.contains("(RequestId ")),
        "{out}"
    );
    assert!(
        problems
            .iter()
            .any(|l| l.contains("sentinel 127.0.0.1:1: unreachable")),
        "{out}"
    );
    assert_eq!(problems.len(), 2, "{out}");
    assert!(!out.contains("not-the-right-key"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_config_is_a_problem_naming_the_key() {
    let w = world().await;
    let path = w.dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[cloud]\nregion = \"ap-guangzhou\"\nhosting_type = 1\n[node]\n[sentinel]\naddresses = [\"127.0.0.1:1\"]\n",
    )
    .unwrap();
    let (code, out) = tokio::task::spawn_blocking(move || check(&path, &[]))
        .await
        .unwrap();
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("problem: ") && out.contains("cloud.hosting_type"),
        "{out}"
    );
}

/// The HAVIP of the world, replaced by one made with `CreateHaVip`'s default: `CheckAssociate` off.
fn check_associate_off(w: &World) {
    w.cloud.add_havip(
        HavipSpec::new("havip-check001", "198.18.0.100".parse().unwrap()).associate("ins-check"),
    );
}

fn env_keys() -> Vec<(&'static str, &'static str)> {
    vec![
        ("TENCENTCLOUD_SECRET_ID", ID),
        ("TENCENTCLOUD_SECRET_KEY", KEY),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_associate_off_with_exclusive_scope_is_a_problem_that_says_why_and_how_to_fix() {
    let w = world().await;
    check_associate_off(&w);
    let path = config_with(&w, "", "", &w.lab.sentinel_addrs(), "scope = \"exclusive\"");

    let (code, out) = tokio::task::spawn_blocking(move || check(&path, &env_keys()))
        .await
        .unwrap();

    assert_eq!(code, 2, "{out}");
    let problems: Vec<&str> = out.lines().filter(|l| l.starts_with("problem: ")).collect();
    assert_eq!(problems.len(), 1, "{out}");
    let p = problems[0];
    assert!(
        p.starts_with("problem: havip-check001: CheckAssociate is off"),
        "{p}"
    );
    assert!(
        p.contains("any instance's gratuitous ARP takes the vip"),
        "{p}"
    );
    assert!(p.contains("fences nothing"), "{p}");
    assert!(
        p.contains("create a new HAVIP with CheckAssociate on"),
        "{p}"
    );
    assert!(p.contains("cannot be turned on later"), "{p}");
    assert!(out.contains("drift-range limiting off"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_associate_off_with_inclusive_scope_and_an_http_webhook_are_warnings_and_exit_zero() {
    let w = world().await;
    check_associate_off(&w);
    let hook_key = "hookKeyVerySecret0004";
    let tail = format!("\n[[alert]]\nurl = \"http://127.0.0.1:9/hook?key={hook_key}\"\n");
    let path = config_with(&w, "", "", &w.lab.sentinel_addrs(), &tail);

    let (code, out) = tokio::task::spawn_blocking(move || check(&path, &env_keys()))
        .await
        .unwrap();

    assert_eq!(code, 0, "{out}");
    assert!(!out.contains("problem: "), "{out}");
    let warnings: Vec<&str> = out.lines().filter(|l| l.starts_with("warning: ")).collect();
    let range = warnings
        .iter()
        .find(|l| l.starts_with("warning: havip-check001: CheckAssociate is off"))
        .unwrap_or_else(|| panic!("no CheckAssociate warning: {out}"));
    assert!(range.contains("any instance's gratuitous ARP"), "{range}");
    assert!(
        range.contains("create a new HAVIP with CheckAssociate on"),
        "{range}"
    );
    assert!(
        warnings
            .iter()
            .any(|l| l.starts_with("warning: alert[0].url is http://") && l.contains("in clear")),
        "{out}"
    );
    assert!(
        !out.contains(hook_key),
        "the webhook URL holds a key: {out}"
    );
    assert_eq!(
        warnings.len(),
        3,
        "endpoint, webhook, CheckAssociate: {out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eni_mode_on_the_primary_eni_is_a_problem_and_a_secondary_eni_is_not() {
    let w = world().await;
    // The world's metadata: eth0 (the primary MAC) is ENI eni_id_for("ins-check"); add a secondary ENI.
    let primary = havip_testkit::fake::eni_id_for("ins-check");
    let on_primary = config_with(
        &w,
        "",
        &format!("instance_type = \"ENI\"\ninstance_id = \"{primary}\""),
        &w.lab.sentinel_addrs(),
        "",
    );
    let on_secondary = config_with(
        &w,
        "",
        "instance_type = \"ENI\"\ninstance_id = \"eni-second01\"",
        &w.lab.sentinel_addrs(),
        "",
    );
    let metadata = FakeMetadata::start(
        MetadataSpec::new(
            "ins-check",
            "198.18.0.11".parse().unwrap(),
            [2, 0, 0, 0, 0, 1],
        )
        .with_eni(
            [2, 0, 0, 0, 0, 2],
            "eni-second01",
            "198.18.0.12".parse().unwrap(),
        ),
    )
    .await;
    let md = w.metadata.endpoint();
    let secondary_text = std::fs::read_to_string(&on_secondary)
        .unwrap()
        .replace(&md, &metadata.endpoint());
    std::fs::write(&on_secondary, secondary_text).unwrap();
    w.cloud.add_havip(
        HavipSpec::new("havip-check001", "198.18.0.100".parse().unwrap())
            .check_associate(true)
            .associate_eni("eni-second01"),
    );

    let (primary_code, primary_out) =
        tokio::task::spawn_blocking(move || check(&on_primary, &env_keys()))
            .await
            .unwrap();
    let (secondary_code, secondary_out) =
        tokio::task::spawn_blocking(move || check(&on_secondary, &env_keys()))
            .await
            .unwrap();

    assert_eq!(primary_code, 2, "{primary_out}");
    let p: Vec<&str> = primary_out
        .lines()
        .filter(|l| l.starts_with("problem: "))
        .collect();
    assert_eq!(p.len(), 1, "{primary_out}");
    assert!(
        p[0].contains(&format!(
            "node.instance_id {primary} is this instance's primary ENI"
        )) && p[0].contains("cannot join a HAVIP's drift range")
            && p[0].contains("secondary ENI"),
        "{primary_out}"
    );
    assert_eq!(secondary_code, 0, "{secondary_out}");
    assert!(
        secondary_out.contains("node: eni-second01 is a secondary ENI"),
        "{secondary_out}"
    );
    assert!(
        secondary_out.contains("this node in range yes"),
        "{secondary_out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eni_mode_against_a_range_of_cvm_entries_is_a_problem() {
    let w = world().await;
    // The world's range lists the CVM ins-check; this node is configured as a secondary ENI.
    let path = config_with(
        &w,
        "",
        "instance_type = \"ENI\"\ninstance_id = \"eni-second01\"",
        &w.lab.sentinel_addrs(),
        "",
    );

    let (code, out) = tokio::task::spawn_blocking(move || check(&path, &env_keys()))
        .await
        .unwrap();

    assert_eq!(code, 2, "{out}");
    assert!(
        out.lines().any(|l| l
            .starts_with("problem: havip-check001: the drift range lists CVM ins-check")
            && l.contains("node.instance_type = \"ENI\"")),
        "{out}"
    );
}

/// Appends `eip = "<eip>"` to the config's only `[[havip]]` (its last table).
fn with_eip(path: &Path, eip: &str) -> std::path::PathBuf {
    let text = std::fs::read_to_string(path).unwrap();
    std::fs::write(path, format!("{text}eip = \"{eip}\"\n")).unwrap();
    path.to_path_buf()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_configured_eip_is_checked_against_the_havips_address_ip() {
    let w = world().await;
    let env = [
        ("TENCENTCLOUD_SECRET_ID", ID),
        ("TENCENTCLOUD_SECRET_KEY", KEY),
    ];
    let run = |path: std::path::PathBuf| tokio::task::spawn_blocking(move || check(&path, &env));
    let problems = |out: &str| -> Vec<String> {
        out.lines()
            .filter(|l| l.starts_with("problem: "))
            .map(str::to_owned)
            .collect()
    };

    // Configured, but the HAVIP has no EIP: a problem saying how to fix it.
    let path = with_eip(&config(&w, "", &w.lab.sentinel_addrs()), "203.0.113.10");
    let (code, out) = run(path.clone()).await.unwrap();
    assert_eq!(code, 2, "{out}");
    let p = problems(&out);
    assert_eq!(p.len(), 1, "{out}");
    assert!(
        p[0].starts_with("problem: havip-check001: eip 203.0.113.10 is not bound to the havip")
            && p[0].contains("the agent binds it when it starts")
            && p[0].contains("HaVipAssociateAddressIp"),
        "{out}"
    );

    // Another EIP on the HAVIP: a problem naming both, and that the agent will not replace it.
    w.cloud
        .set_havip_eip("havip-check001", "203.0.113.99".parse().unwrap());
    let (code, out) = run(path.clone()).await.unwrap();
    assert_eq!(code, 2, "{out}");
    let p = problems(&out);
    assert_eq!(p.len(), 1, "{out}");
    assert!(
        p[0].contains("has eip 203.0.113.99, not havip.eip 203.0.113.10")
            && p[0].contains("never replaces"),
        "{out}"
    );

    // Bound as configured: healthy, and said so.
    w.cloud
        .set_havip_eip("havip-check001", "203.0.113.10".parse().unwrap());
    let (code, out) = run(path).await.unwrap();
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("havip-check001: eip 203.0.113.10 bound\n"),
        "{out}"
    );
    assert_no_secret(&out);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_readable_env_file_is_a_problem_and_insecure_sentinel_tls_a_warning() {
    use std::os::unix::fs::PermissionsExt;
    let w = world().await;
    let path = config(&w, "", &w.lab.sentinel_addrs());
    // The packaged unit's EnvironmentFile= sits next to the config.
    let env_file = path.parent().unwrap().join("env");
    std::fs::write(&env_file, format!("TENCENTCLOUD_SECRET_KEY={KEY}\n")).unwrap();
    let set_mode =
        |mode| std::fs::set_permissions(&env_file, std::fs::Permissions::from_mode(mode)).unwrap();

    set_mode(0o644);
    let p = path.clone();
    let (code, out) = tokio::task::spawn_blocking(move || check(&p, &env_keys()))
        .await
        .unwrap();
    assert_eq!(code, 2, "{out}");
    let problem = out
        .lines()
        .find(|l| l.starts_with("problem: ") && l.contains("readable by group or others"))
        .unwrap_or_else(|| panic!("no problem line for the env file: {out}"));
    assert!(
        problem.contains(&env_file.display().to_string()) && problem.contains("chmod 600"),
        "{problem}"
    );
    assert_no_secret(&out);

    set_mode(0o600);
    let p = path.clone();
    let (code, out) = tokio::task::spawn_blocking(move || check(&p, &env_keys()))
        .await
        .unwrap();
    assert_eq!(code, 0, "a 0600 env file is fine: {out}");

    // Insecure TLS toward the Sentinels is said (the plain-TCP lab then fails the TLS handshake too).
    let tls = config_with(
        &w,
        "",
        "",
        &w.lab.sentinel_addrs(),
        "\n[sentinel.tls]\ninsecure = true\n",
    );
    let (_, out) = tokio::task::spawn_blocking(move || check(&tls, &env_keys()))
        .await
        .unwrap();
    assert!(
        out.lines()
            .any(|l| l.starts_with("warning: sentinel.tls.insecure = true")
                && l.contains("not checked")),
        "{out}"
    );
}
