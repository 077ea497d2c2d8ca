//! Hooks do not inherit the agent's cloud credentials. A test binary of its own: it sets process
//! environment variables, which must not race with other tests spawning processes.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use havip_agent::config::{Dur, HooksConfig};
use havip_agent::hooks::{HookContext, Hooks};

#[test]
fn hooks_do_not_see_cloud_credentials() {
    // SAFETY: the only test in this binary, and no other thread exists yet.
    unsafe {
        std::env::set_var("TENCENTCLOUD_SECRET_ID", "AKIDleak");
        std::env::set_var("TENCENTCLOUD_SECRET_KEY", "keyleak");
        std::env::set_var("TENCENTCLOUD_TOKEN", "tokenleak");
        std::env::set_var("HAVIP_TEST_MARKER", "inherited");
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("env");
    let hook = dir.path().join("hook.sh");
    std::fs::write(&hook, format!("#!/bin/sh\nenv > {}\n", out.display())).unwrap();
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
            ..HookContext::default()
        });
        assert!(hooks.flush(Duration::from_secs(20)).await);
    });

    let env = std::fs::read_to_string(&out).unwrap();
    assert!(env.contains("HAVIP_TEST_MARKER=inherited"), "{env}");
    assert!(env.contains("HAVIP_ID=havip-1"), "{env}");
    for leak in ["AKIDleak", "keyleak", "tokenleak"] {
        assert!(!env.contains(leak), "{leak} reached the hook");
    }
}
