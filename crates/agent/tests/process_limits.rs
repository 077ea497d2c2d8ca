//! `process`: the start-up hardening of `havip-agent run`, applied to this test process (its own binary, so
//! the changed limit and dumpability touch no other test).

use havip_agent::process::{forbid_core_dumps, is_dumpable, raise_nofile};

fn nofile() -> (u64, u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
    (lim.rlim_cur, lim.rlim_max)
}

#[test]
fn the_soft_descriptor_limit_is_raised_to_the_hard_one_and_the_process_is_not_dumpable() {
    // Arrange: a soft limit of 1024 under a higher hard one, as a start outside systemd gets.
    let (_, hard) = nofile();
    assert!(
        hard > 1024,
        "the test needs a hard limit above 1024, got {hard}"
    );
    let low = libc::rlimit {
        rlim_cur: 1024,
        rlim_max: hard,
    };
    // SAFETY: setrlimit reads the struct we own.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &low) }, 0);
    assert!(is_dumpable().unwrap(), "a test process starts dumpable");

    // Act
    let r = raise_nofile().unwrap();
    forbid_core_dumps().unwrap();

    // Assert
    assert_eq!((r.before, r.hard), (1024, hard));
    let (soft, _) = nofile();
    assert_eq!(soft, r.after);
    assert!(soft > 1024, "the soft limit stayed at {soft}");
    if hard != libc::RLIM_INFINITY {
        assert_eq!(soft, hard);
    }
    assert!(!is_dumpable().unwrap());
    // A second call finds nothing to raise.
    let again = raise_nofile().unwrap();
    assert_eq!(again.before, again.after);
}
