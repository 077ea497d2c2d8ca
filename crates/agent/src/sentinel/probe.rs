//! The one-shot observer: asks every configured Sentinel once, in parallel, and returns the same
//! [`Snapshot`] the watcher publishes, so `migrate-havip`, `status` and `check` read it with the same rules
//! ([`Snapshot::view`]) as the daemon.
//!
//! Owns one round of questions: the watcher's pipeline ([`super::conn::query_masters`]) to each Sentinel,
//! then `ROLE` wherever a configuration has only one reporter, exactly as the watcher corroborates. It keeps
//! no connection and decides nothing.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Instant;

use futures::StreamExt;
use futures::stream::FuturesUnordered;

use super::conn::{self, ConnectOptions};
use super::snapshot::{SentinelState, Snapshot};
use crate::config::SentinelConfig;

/// Asks every Sentinel in `cfg` about `masters` and corroborates lone configurations with `ROLE` (reaching
/// Redis with `role`). Every request is bounded by `cfg.timeout`, so this takes about two timeouts at most.
pub async fn probe(cfg: &SentinelConfig, masters: &[String], role: &ConnectOptions) -> Snapshot {
    probe_until(cfg, masters, role, |_| false).await
}

/// [`probe`], returning as soon as `enough` says the answers so far decide the question (Sentinels that
/// have not answered yet count as out of sight). A one-shot caller whose wake-up a majority already
/// confirms need not wait for an isolated Sentinel's timeout.
pub async fn probe_until(
    cfg: &SentinelConfig,
    masters: &[String],
    role: &ConnectOptions,
    enough: impl Fn(&Snapshot) -> bool,
) -> Snapshot {
    let opts = ConnectOptions::sentinel(cfg);
    let mut pending: FuturesUnordered<_> = cfg
        .addresses
        .iter()
        .enumerate()
        .map(|(i, addr)| {
            let opts = &opts;
            async move { (i, ask(addr, masters, opts).await) }
        })
        .collect();
    let mut snap = Snapshot::empty(&cfg.addresses);
    for s in &mut snap.sentinels {
        s.error = Some("no answer yet".into());
    }
    let mut roles: HashMap<SocketAddr, bool> = HashMap::new();
    while let Some((i, state)) = pending.next().await {
        snap.sentinels[i] = state;
        snap.seq += 1;
        corroborate(&mut snap, masters, role, &mut roles).await;
        snap.at = Instant::now();
        if !pending.is_empty() && enough(&snap) {
            break;
        }
    }
    snap
}

/// Asks `ROLE` wherever a configuration has only one reporter (as the watcher does), once per address.
async fn corroborate(
    snap: &mut Snapshot,
    masters: &[String],
    role: &ConnectOptions,
    roles: &mut HashMap<SocketAddr, bool>,
) {
    let checks: Vec<(usize, String, SocketAddr)> = (0..snap.sentinels.len())
        .flat_map(|i| {
            let snap = &*snap;
            masters
                .iter()
                .filter_map(move |m| Some((i, m.clone(), snap.needs_role_check(i, m)?)))
        })
        .collect();
    let unknown: Vec<SocketAddr> = checks
        .iter()
        .map(|(_, _, at)| *at)
        .filter(|at| !roles.contains_key(at))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let results = futures::future::join_all(
        unknown
            .iter()
            .map(|at| conn::confirm_role(at.ip(), at.port(), role)),
    )
    .await;
    for (at, r) in unknown.into_iter().zip(results) {
        roles.insert(at, matches!(r, Ok(true)));
    }
    for (i, m, at) in checks {
        if roles.get(&at) == Some(&true) {
            snap.sentinels[i].role_confirmed.insert(m, true);
        }
    }
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
