//! The one-shot observer: asks every configured Sentinel once, in parallel, and returns the same
//! [`Snapshot`] the watcher publishes, so `migrate-havip`, `status` and `check` read it with the same rules
//! ([`Snapshot::view`]) as the daemon.
//!
//! Owns one round of questions: the watcher's pipeline ([`super::conn::query_masters`]) to each Sentinel,
//! then `ROLE` wherever a configuration has only one reporter, exactly as the watcher corroborates. It keeps
//! no connection and decides nothing.

use std::collections::HashMap;
use std::time::Instant;

use super::conn::{self, ConnectOptions};
use super::snapshot::{SentinelState, Snapshot};
use crate::config::SentinelConfig;

/// Asks every Sentinel in `cfg` about `masters` and corroborates lone configurations with `ROLE` (reaching
/// Redis with `role`). Every request is bounded by `cfg.timeout`, so this takes about two timeouts at most.
pub async fn probe(cfg: &SentinelConfig, masters: &[String], role: &ConnectOptions) -> Snapshot {
    let opts = ConnectOptions::sentinel(cfg);
    let states =
        futures::future::join_all(cfg.addresses.iter().map(|addr| ask(addr, masters, &opts))).await;
    let mut snap = Snapshot::empty(&cfg.addresses);
    snap.sentinels = states;
    snap.seq = 1;
    let checks: Vec<(usize, String, std::net::SocketAddr)> = (0..snap.sentinels.len())
        .flat_map(|i| {
            let snap = &snap;
            masters
                .iter()
                .filter_map(move |m| Some((i, m.clone(), snap.needs_role_check(i, m)?)))
        })
        .collect();
    let results = futures::future::join_all(
        checks
            .iter()
            .map(|(_, _, at)| conn::confirm_role(at.ip(), at.port(), role)),
    )
    .await;
    for ((i, m, _), r) in checks.into_iter().zip(results) {
        if matches!(r, Ok(true)) {
            snap.sentinels[i].role_confirmed.insert(m, true);
        }
    }
    snap.at = Instant::now();
    snap
}

/// One Sentinel's state after one question.
async fn ask(addr: &str, masters: &[String], opts: &ConnectOptions) -> SentinelState {
    let mut state = SentinelState::new(addr);
    let answer = match conn::connect(addr, opts).await {
        Ok(mut c) => conn::query_masters(&mut c, addr, masters, opts.timeout).await,
        Err(e) => Err(e),
    };
    match answer {
        Ok(answer) => {
            let now = Instant::now();
            let mut errors = Vec::new();
            let mut found = HashMap::new();
            for (name, r) in masters.iter().zip(answer.masters) {
                match r {
                    Ok(info) => {
                        found.insert(name.clone(), info);
                        state.master_since.insert(name.clone(), now);
                    }
                    Err(e) => errors.push(format!("{name}: {e}")),
                }
            }
            state.reachable = true;
            state.last_ok = Some(now);
            state.myid = answer.myid;
            state.masters = found;
            state.error = (!errors.is_empty()).then(|| errors.join("; "));
        }
        Err(e) => state.error = Some(e.to_string()),
    }
    state
}
