//! `deploy/install.sh` (dry run, and a real run into a fake root) and the Debian package metadata and
//! maintainer scripts.

mod deploy_support;

use std::collections::BTreeSet;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use deploy_support::{deploy, ensure_tool, is_root, package, run, text};

/// The directory holding the binaries this test run built (stand-ins for target/release).
fn bin_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_havip-agent"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// A fake root with the user database files useradd needs, holding only root.
fn fake_root() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let etc = dir.path().join("etc");
    std::fs::create_dir_all(&etc).unwrap();
    for (file, line) in [
        ("passwd", "root:x:0:0:root:/root:/bin/bash\n"),
        ("group", "root:x:0:\n"),
        ("shadow", "root:*:19000:0:99999:7:::\n"),
        ("gshadow", "root:*::\n"),
    ] {
        std::fs::write(etc.join(file), line).unwrap();
    }
    dir
}

fn install_sh(args: &[&str]) -> std::process::Output {
    run(Command::new("bash")
        .arg(deploy("install.sh"))
        .arg("--bin-dir")
        .arg(bin_dir())
        .args(args))
}

/// Every path under `root` with its mode, owner and group.
fn tree(root: &Path) -> BTreeSet<String> {
    fn walk(dir: &Path, root: &Path, out: &mut BTreeSet<String>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            out.insert(format!(
                "{} {:o} {}:{}",
                p.strip_prefix(root).unwrap().display(),
                m.mode(),
                m.uid(),
                m.gid()
            ));
            if m.is_dir() {
                walk(&p, root, out);
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(root, root, &mut out);
    out
}

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .mode()
        & 0o7777
}

fn owner(p: &Path) -> (u32, u32) {
    let m = std::fs::symlink_metadata(p).unwrap();
    (m.uid(), m.gid())
}

/// uid and gid of `name` in `root`'s passwd file.
fn ids(root: &Path, name: &str) -> (u32, u32) {
    let passwd = std::fs::read_to_string(root.join("etc/passwd")).unwrap();
    let line = passwd
        .lines()
        .find(|l| l.starts_with(&format!("{name}:")))
        .unwrap_or_else(|| panic!("no user {name} in {passwd}"));
    let f: Vec<&str> = line.split(':').collect();
    (f[2].parse().unwrap(), f[3].parse().unwrap())
}

#[test]
fn shell_scripts_parse_and_are_shellcheck_clean() {
    let shellcheck = ensure_tool("shellcheck", "shellcheck");
    for (script, shell) in [
        ("install.sh", "bash"),
        ("debian/postinst", "sh"),
        ("debian/postrm", "sh"),
    ] {
        let path = deploy(script);
        let out = run(Command::new(shell).arg("-n").arg(&path));
        assert!(out.status.success(), "{shell} -n {script}: {}", text(&out));
        let out = run(Command::new(&shellcheck).args(["-s", shell]).arg(&path));
        assert!(out.status.success(), "shellcheck {script}:\n{}", text(&out));
        assert!(
            mode(&path) & 0o111 != 0,
            "{script} is not executable (mode {:o})",
            mode(&path)
        );
    }
}

#[test]
fn install_dry_run_prints_every_step_and_changes_nothing() {
    let root = fake_root();
    let before = tree(root.path());

    let out = install_sh(&[
        "--root",
        root.path().to_str().unwrap(),
        "--dry-run",
        "--sentinel-dropin",
    ]);

    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert_eq!(tree(root.path()), before, "a dry run changed files:\n{all}");
    let r = root.path().display();
    for want in [
        "+ useradd --prefix".to_owned(),
        "--system --user-group".to_owned(),
        "/usr/bin/havip-agent".to_owned(),
        format!(
            "-m 0750 -o 0 -g havip-agent {}/migrate-havip {r}/usr/bin/migrate-havip",
            bin_dir().display()
        ),
        format!("+ setcap cap_net_admin\\,cap_net_raw+ep {r}/usr/bin/migrate-havip"),
        format!(
            "-m 0640 -o 0 -g havip-agent {}/config.example.toml {r}/etc/havip-agent/config.toml",
            deploy("").display().to_string().trim_end_matches('/')
        ),
        format!("-m 3770 -o havip-agent -g havip-agent {r}/run/havip-agent"),
        format!("{r}/etc/systemd/system/havip-agent.service"),
        format!("{r}/etc/systemd/system/redis-sentinel.service.d/havip-agent.conf"),
        format!("+ systemctl --root={r} enable havip-agent.service"),
    ] {
        assert!(all.contains(&want), "dry run lacks {want:?}:\n{all}");
    }
}

#[test]
fn install_rejects_bad_arguments_and_missing_binaries_before_doing_anything() {
    let out = run(Command::new("bash")
        .arg(deploy("install.sh"))
        .arg("--frobnicate"));
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out).contains("unknown argument: --frobnicate"),
        "{}",
        text(&out)
    );

    let empty = tempfile::tempdir().unwrap();
    let root = fake_root();
    let out = run(Command::new("bash")
        .arg(deploy("install.sh"))
        .arg("--bin-dir")
        .arg(empty.path())
        .arg("--root")
        .arg(root.path()));
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out).contains("missing") && text(&out).contains("havip-agent"),
        "{}",
        text(&out)
    );
    assert_eq!(
        std::fs::read_dir(root.path()).unwrap().count(),
        1,
        "only etc/ from fake_root"
    );
}

#[test]
fn install_into_a_fake_root_sets_owners_modes_capabilities_and_is_idempotent() {
    assert!(
        is_root(),
        "installing (chown, setcap) needs root: run the tests as root"
    );
    let getcap = ensure_tool("getcap", "libcap2-bin");
    ensure_tool("setcap", "libcap2-bin");
    ensure_tool("systemctl", "systemd");
    let root = fake_root();
    let r = root.path();
    let rs = r.to_str().unwrap();

    let out = install_sh(&["--root", rs]);
    assert!(out.status.success(), "{}", text(&out));

    let passwd = std::fs::read_to_string(r.join("etc/passwd")).unwrap();
    assert!(
        passwd.contains(":/nonexistent:/usr/sbin/nologin"),
        "user is not a no-login system user: {passwd}"
    );
    let (uid, gid) = ids(r, "havip-agent");
    assert!(uid < 1000 && uid != 0, "not a system uid: {uid}");
    let expect = [
        ("usr/bin/havip-agent", 0o755, (0, 0)),
        ("usr/bin/migrate-havip", 0o750, (0, gid)),
        ("etc/havip-agent", 0o750, (0, gid)),
        ("etc/havip-agent/config.toml", 0o640, (0, gid)),
        ("etc/havip-agent/env", 0o600, (0, 0)),
        ("run/havip-agent", 0o3770, (uid, gid)),
        ("etc/systemd/system/havip-agent.service", 0o644, (0, 0)),
        ("etc/tmpfiles.d/havip-agent.conf", 0o644, (0, 0)),
    ];
    for (path, want_mode, want_owner) in expect {
        let p = r.join(path);
        assert_eq!(mode(&p), want_mode, "{path} mode {:o}", mode(&p));
        assert_eq!(owner(&p), want_owner, "{path} owner");
    }
    let caps = text(&run(
        Command::new(&getcap).arg(r.join("usr/bin/migrate-havip"))
    ));
    assert!(caps.contains("cap_net_admin,cap_net_raw=ep"), "{caps}");
    let caps = text(&run(
        Command::new(&getcap).arg(r.join("usr/bin/havip-agent"))
    ));
    assert!(
        !caps.contains("cap_"),
        "the daemon gets capabilities from systemd, not the file: {caps}"
    );
    assert_eq!(
        std::fs::read_link(
            r.join("etc/systemd/system/multi-user.target.wants/havip-agent.service")
        )
        .unwrap(),
        Path::new("/etc/systemd/system/havip-agent.service")
    );
    assert_eq!(
        std::fs::read(r.join("etc/havip-agent/config.toml")).unwrap(),
        std::fs::read(deploy("config.example.toml")).unwrap()
    );
    assert!(
        !r.join("etc/systemd/system/redis-sentinel.service.d")
            .exists()
    );

    // Again, as an upgrade: the edited config stays, the user is not added twice, capabilities return.
    std::fs::write(r.join("etc/havip-agent/config.toml"), "# edited\n").unwrap();
    std::fs::set_permissions(
        r.join("etc/havip-agent/config.toml"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    let out = install_sh(&["--root", rs, "--sentinel-dropin"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("keeping the existing"),
        "{}",
        text(&out)
    );
    assert_eq!(
        std::fs::read_to_string(r.join("etc/havip-agent/config.toml")).unwrap(),
        "# edited\n"
    );
    assert_eq!(mode(&r.join("etc/havip-agent/config.toml")), 0o600);
    let passwd = std::fs::read_to_string(r.join("etc/passwd")).unwrap();
    assert_eq!(
        passwd
            .lines()
            .filter(|l| l.starts_with("havip-agent:"))
            .count(),
        1,
        "{passwd}"
    );
    assert_eq!(ids(r, "havip-agent"), (uid, gid));
    let caps = text(&run(
        Command::new(&getcap).arg(r.join("usr/bin/migrate-havip"))
    ));
    assert!(caps.contains("cap_net_admin,cap_net_raw=ep"), "{caps}");
    assert_eq!(
        mode(&r.join("etc/systemd/system/redis-sentinel.service.d/havip-agent.conf")),
        0o644
    );
}

// --- Debian package ---------------------------------------------------------------------------------------

fn deb_metadata() -> (toml::Table, toml::Table) {
    let manifest: toml::Table = std::fs::read_to_string(package().join("Cargo.toml"))
        .unwrap()
        .parse()
        .unwrap();
    let deb = manifest["package"]["metadata"]["deb"]
        .as_table()
        .expect("Cargo.toml has no [package.metadata.deb]")
        .clone();
    (manifest, deb)
}

#[test]
fn deb_assets_exist_and_land_where_the_unit_and_docs_expect() {
    let (manifest, deb) = deb_metadata();
    let bins: BTreeSet<&str> = manifest["bin"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["name"].as_str().unwrap())
        .collect();
    let mut dests = Vec::new();
    for asset in deb["assets"].as_array().unwrap() {
        let a: Vec<&str> = asset
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        let [src, dest, mode] = a[..] else {
            panic!("asset {a:?} is not [source, dest, mode]")
        };
        if let Some(bin) = src.strip_prefix("target/release/") {
            // cargo-deb builds these; they must be binaries of this package.
            assert!(
                bins.contains(bin),
                "asset {src} is not a [[bin]] of this package"
            );
        } else {
            assert!(package().join(src).is_file(), "asset {src} does not exist");
        }
        assert!(!dest.starts_with('/'), "asset dest {dest} must be relative");
        u32::from_str_radix(mode, 8).unwrap_or_else(|_| panic!("mode {mode:?} of {src}"));
        let full = if dest.ends_with('/') {
            format!(
                "/{dest}{}",
                Path::new(src).file_name().unwrap().to_str().unwrap()
            )
        } else {
            format!("/{dest}")
        };
        dests.push((full, mode.to_owned()));
    }
    let has = |path: &str, mode: &str| dests.iter().any(|(d, m)| d == path && m == mode);
    assert!(has("/usr/bin/havip-agent", "755"), "{dests:?}");
    assert!(has("/usr/bin/migrate-havip", "755"), "{dests:?}");
    assert!(has("/etc/havip-agent/config.toml", "640"), "{dests:?}");
    assert!(has("/etc/havip-agent/env", "600"), "{dests:?}");
    for conf in deb["conf-files"].as_array().unwrap() {
        let conf = conf.as_str().unwrap();
        assert!(
            dests.iter().any(|(d, _)| d == conf),
            "conffile {conf} is not an asset"
        );
    }

    let units = deb["systemd-units"].as_table().unwrap();
    assert_eq!(units["unit-name"].as_str(), Some("havip-agent"));
    let dir = package().join(units["unit-scripts"].as_str().unwrap());
    // cargo-deb picks <package>.service and <package>.tmpfile from that directory.
    for f in ["havip-agent.service", "havip-agent.tmpfile"] {
        assert!(dir.join(f).is_file(), "{} missing", dir.join(f).display());
    }
    assert_eq!(
        units["start"].as_bool(),
        Some(false),
        "the example config must be edited first"
    );
}

#[test]
fn deb_maintainer_scripts_exist_and_carry_the_debhelper_token() {
    let (_, deb) = deb_metadata();
    let dir = package().join(deb["maintainer-scripts"].as_str().unwrap());
    for script in ["postinst", "postrm"] {
        let path = dir.join(script);
        let body =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(body.starts_with("#!/bin/sh\n"), "{script}");
        assert!(
            body.contains("\n#DEBHELPER#\n"),
            "{script} lacks #DEBHELPER#"
        );
        assert!(body.contains("set -e"), "{script}");
    }
}

/// Runs a maintainer script with every external command replaced by a stub that logs its arguments.
/// `found` decides whether the user and the stat override exist already.
fn run_with_stubs(script: &str, arg: &str, found: bool) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let stubs = dir.path().join("bin");
    std::fs::create_dir(&stubs).unwrap();
    let found_code = if found { 0 } else { 2 };
    for cmd in [
        "adduser",
        "chgrp",
        "chmod",
        "delgroup",
        "deluser",
        "dpkg-statoverride",
        "getent",
        "install",
        "rm",
        "rmdir",
        "setcap",
        "stat",
    ] {
        let behaviour = match cmd {
            "getent" => format!("exit {found_code}"),
            "dpkg-statoverride" => format!("[ \"$1\" = --list ] && exit {found_code}; exit 0"),
            "stat" => "echo root".to_owned(),
            _ => "exit 0".to_owned(),
        };
        let p = stubs.join(cmd);
        std::fs::write(
            &p,
            format!(
                "#!/bin/sh\necho \"{cmd} $*\" >> {}\n{behaviour}\n",
                log.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    // PATH holds only the stubs: an external command the test does not know about fails loudly.
    let out = run(Command::new("/bin/sh")
        .arg(deploy(script))
        .arg(arg)
        .env_clear()
        .env("PATH", &stubs));
    assert!(out.status.success(), "{script} {arg}: {}", text(&out));
    std::fs::read_to_string(&log)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn postinst_creates_the_user_restricts_migrate_havip_and_sets_capabilities() {
    let calls = run_with_stubs("debian/postinst", "configure", false);
    let has = |want: &str| calls.iter().any(|c| c == want);
    assert!(
        has(
            "adduser --system --group --home /nonexistent --no-create-home --shell /usr/sbin/nologin --gecos havip-agent havip-agent"
        ),
        "{calls:#?}"
    );
    assert!(
        has("dpkg-statoverride --update --add root havip-agent 0750 /usr/bin/migrate-havip"),
        "{calls:#?}"
    );
    assert!(
        has("setcap cap_net_admin,cap_net_raw+ep /usr/bin/migrate-havip"),
        "{calls:#?}"
    );
    let override_at = calls
        .iter()
        .position(|c| c.starts_with("dpkg-statoverride --update"))
        .unwrap();
    let setcap_at = calls.iter().position(|c| c.starts_with("setcap")).unwrap();
    assert!(
        override_at < setcap_at,
        "a change of owner clears capabilities: {calls:#?}"
    );

    // Upgrade: the user and the override exist; only the capabilities are set again.
    let calls = run_with_stubs("debian/postinst", "configure", true);
    assert!(
        !calls.iter().any(|c| c.starts_with("adduser")),
        "{calls:#?}"
    );
    assert!(!calls.iter().any(|c| c.contains("--add")), "{calls:#?}");
    assert!(calls.iter().any(|c| c.starts_with("setcap")), "{calls:#?}");
}

#[test]
fn postrm_removes_the_user_only_on_purge() {
    let calls = run_with_stubs("debian/postrm", "purge", true);
    for want in [
        "dpkg-statoverride --remove /usr/bin/migrate-havip",
        "rm -rf /run/havip-agent",
        "deluser --quiet --system havip-agent",
        "delgroup --quiet --system --only-if-empty havip-agent",
    ] {
        assert!(
            calls.iter().any(|c| c == want),
            "lacks {want:?}: {calls:#?}"
        );
    }
    let calls = run_with_stubs("debian/postrm", "remove", true);
    assert!(
        calls.is_empty(),
        "remove must keep user and config: {calls:#?}"
    );
}
