//! Hooks get nothing of the agent's privileges: no capabilities and exactly the documented environment. A
//! test binary of its own: it sets process environment variables and capabilities, which must not race
//! with other tests spawning processes.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use havip_agent::config::{Dur, HooksConfig};
use havip_agent::hooks::{HookContext, Hooks};

/// Bit of CAP_NET_ADMIN.
const NET_ADMIN: libc::c_ulong = 12;

/// Makes CAP_NET_ADMIN ambient in this thread (the threads started after inherit it), as systemd's
/// `AmbientCapabilities=` does for the agent: a hook that kept it would show it in `CapAmb`.
fn raise_ambient_net_admin() {
    // Inheritable first (ambient needs it), then ambient.
    #[repr(C)]
    struct Hdr {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Data {
        eff: u32,
        prm: u32,
        inh: u32,
    }
    let mut hdr = Hdr {
        version: 0x2008_0522,
        pid: 0,
    };
    let mut d = [Data::default(); 2];
    // SAFETY: capget/capset v3 with two data entries; prctl with integer arguments.
    unsafe {
        assert_eq!(libc::syscall(libc::SYS_capget, &mut hdr, d.as_mut_ptr()), 0);
        d[0].inh |= 1 << NET_ADMIN;
        assert_eq!(libc::syscall(libc::SYS_capset, &hdr, d.as_ptr()), 0);
        assert_eq!(
            libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_RAISE,
                NET_ADMIN,
                0,
                0
            ),
            0,
            "raising CAP_NET_ADMIN to ambient: {}",
            std::io::Error::last_os_error()
        );
    }
    // Capabilities are per thread, and this test runs on a thread of its own.
    let status = std::fs::read_to_string("/proc/thread-self/status").unwrap();
    assert!(status.contains("CapAmb:\t0000000000001000"), "{status}");
}

fn cap_line(status: &str, name: &str) -> u64 {
    let v = status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")))
        .unwrap_or_else(|| panic!("no {name} in {status}"));
    u64::from_str_radix(v.trim(), 16).unwrap()
}

#[test]
fn hooks_run_without_capabilities_and_with_only_the_documented_environment() {
    // SAFETY: the only test in this binary, and no other thread exists yet.
    unsafe {
        std::env::set_var("TENCENTCLOUD_SECRET_ID", "AKIDleak");
        std::env::set_var("TENCENTCLOUD_SECRET_KEY", "keyleak");
        std::env::set_var("TENCENTCLOUD_TOKEN", "tokenleak");
        std::env::set_var("HAVIP_TEST_MARKER", "inherited");
    }
    raise_ambient_net_admin();
    let dir = tempfile::tempdir().unwrap();
    let env_out = dir.path().join("env");
    let status_out = dir.path().join("status");
    let hook = dir.path().join("hook.sh");
    // `env -0`-free: /usr/bin/env prints one VAR=value per line; the status is the hook's own (`$$`).
    std::fs::write(
        &hook,
        format!(
            "#!/bin/sh\n/usr/bin/env > {}\ncat /proc/$$/status > {}\n",
            env_out.display(),
            status_out.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let hooks = Hooks::new(&HooksConfig {
            on_acquire: None,
            on_release: Some(hook),
            timeout: Dur::from_secs(10),
        });
        hooks.released(HookContext {
            havip: "havip-1".into(),
            vip: "198.18.0.10/24".into(),
            master: "mymaster".into(),
            result: "ok".into(),
            failover_id: "f-1".into(),
        });
        assert!(hooks.flush(Duration::from_secs(20)).await);
    });

    let env = std::fs::read_to_string(&env_out).unwrap();
    let mut got: Vec<&str> = env.lines().collect();
    got.sort_unstable();
    // The shell itself may add PWD, SHLVL and `_`; everything else must be ours.
    got.retain(|l| !["PWD=", "SHLVL=", "_="].iter().any(|p| l.starts_with(p)));
    assert_eq!(
        got,
        [
            "HAVIP_EVENT=released",
            "HAVIP_FAILOVER_ID=f-1",
            "HAVIP_ID=havip-1",
            "HAVIP_MASTER=mymaster",
            "HAVIP_RESULT=ok",
            "HAVIP_VIP=198.18.0.10/24",
            "LANG=C.UTF-8",
            "PATH=/usr/sbin:/usr/bin:/sbin:/bin",
        ],
        "the hook's environment"
    );
    for leak in ["AKIDleak", "keyleak", "tokenleak", "inherited"] {
        assert!(!env.contains(leak), "{leak} reached the hook");
    }

    let status = std::fs::read_to_string(&status_out).unwrap();
    for set in ["CapEff", "CapPrm", "CapInh", "CapAmb"] {
        assert_eq!(
            cap_line(&status, set),
            0,
            "{set} of the hook (run by root):\n{status}"
        );
    }
}
