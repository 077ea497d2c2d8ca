//! `havip-agent demo`: watch a real Sentinel failover move a VIP, in under a minute, on any machine with
//! `redis-server` and `redis-sentinel`.
//!
//! Owns the newcomer's story: start three Redis + three Sentinels on loopback addresses in a temp dir, the
//! fake Tencent Cloud in process and one agent per node (`testbed::agents`), kill the master, and print a
//! timeline with millisecond offsets from the fault. The local bind is simulated (the agents bind on
//! in-memory interfaces whose GARPs reach the fake cloud, as the VPC would see them): the demo never touches
//! this machine's interfaces, so it needs no root. Everything is removed at the end, also on Ctrl-C.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use tokio::sync::broadcast;
use tokio::time::Instant;

use crate::claim::Step;
use crate::daemon::{AgentEvent, AgentEventKind};
use crate::sentinel::Event;
use crate::testbed::agents::{Fleet, FleetSpec, HAVIP_ID, VIP};

/// Arguments of `havip-agent demo`.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// How long to wait for each step before saying it failed.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub step_timeout: Duration,
}

/// A demo step that did not happen.
#[derive(Debug, thiserror::Error)]
#[error("demo failed at step {step:?}: {detail}")]
pub struct DemoError {
    /// The step.
    pub step: &'static str,
    /// What was seen instead.
    pub detail: String,
}

fn fail(step: &'static str, detail: impl Into<String>) -> DemoError {
    DemoError {
        step,
        detail: detail.into(),
    }
}

/// Runs the demo; returns the exit code (0 on success, 1 when a step failed, 2 when it cannot start,
/// 130 on Ctrl-C).
pub async fn run(args: DemoArgs) -> u8 {
    for tool in ["redis-server", "redis-sentinel"] {
        if which(tool).is_none() {
            eprintln!(
                "havip-agent demo: {tool} is not installed: run `sudo apt-get install -y redis-server redis-sentinel`"
            );
            return 2;
        }
    }
    println!(
        "havip-agent demo: a real Redis Sentinel failover moving a HAVIP (fake Tencent Cloud, in process)"
    );
    println!(
        "local bind: simulated (in-memory interfaces; nothing on this machine's network is touched, no root needed)"
    );
    let fleet = tokio::select! {
        f = Fleet::start(FleetSpec::default()) => match f {
            Ok(f) => f,
            Err(e) => {
                eprintln!("havip-agent demo: {:#}", fail("start the redis lab, the fake cloud and the agents", format!("{e:#}")));
                return 2;
            }
        },
        _ = tokio::signal::ctrl_c() => { eprintln!("interrupted"); return 130; }
    };
    let code = tokio::select! {
        r = story(&fleet, &args) => match r {
            Ok(()) => 0,
            Err(e) => { eprintln!("havip-agent demo: {e}"); 1 }
        },
        _ = tokio::signal::ctrl_c() => { eprintln!("interrupted: cleaning up"); 130 }
    };
    fleet.shutdown().await;
    println!("cleaned up: every redis-server, redis-sentinel and temp file of the demo is gone");
    code
}

fn which(tool: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| std::path::Path::new(d).join(tool))
        .find(|p| p.is_file())
}

async fn wait_until(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while !cond() {
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    true
}

async fn story(fleet: &Fleet, args: &DemoArgs) -> Result<(), DemoError> {
    for n in &fleet.nodes {
        println!(
            "node{}: redis {}  sentinel {}  instance {}",
            n.index + 1,
            fleet.lab.redis_addr(n.index),
            fleet.lab.sentinel_addr(n.index),
            n.instance_id
        );
    }
    println!(
        "fake cloud: {}  havip {HAVIP_ID}  vip {VIP}  drift-range limiting on, range empty at start",
        fleet.cloud.endpoint()
    );

    let master = fleet
        .lab
        .wait_master(|_| true, args.step_timeout)
        .await
        .map_err(|e| fail("sentinels agree on the initial master", format!("{e:#}")))?;
    let m = fleet
        .lab
        .node_of(master)
        .ok_or_else(|| fail("initial master", "not a lab host"))?;
    let settled = wait_until(args.step_timeout, || {
        fleet.holders() == vec![m] && fleet.cloud_holder() == Some(m)
    })
    .await;
    if !settled {
        return Err(fail(
            "initial claim",
            format!(
                "holders {:?}, cloud holder {:?}",
                fleet.holders(),
                fleet.cloud_holder()
            ),
        ));
    }
    println!(
        "initial state: node{} is master and holds the vip; the cloud agrees",
        m + 1
    );

    let mut rxs: Vec<broadcast::Receiver<AgentEvent>> =
        fleet.nodes.iter().map(|n| n.events.subscribe()).collect();
    let fault_at = Instant::now();
    let fault_wall = SystemTime::now();
    fleet.lab.kill_redis(m);
    println!(
        "\nfault: killed redis-server on node{} (SIGKILL); waiting for Sentinel and the agents...\n",
        m + 1
    );

    let moved = wait_until(args.step_timeout, || {
        let h = fleet.holders();
        h.len() == 1 && h[0] != m && fleet.cloud_holder() == Some(h[0])
    })
    .await;
    // Let the winner's confirm loop report.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut events: Vec<(usize, AgentEvent)> = Vec::new();
    for (i, rx) in rxs.iter_mut().enumerate() {
        while let Ok(e) = rx.try_recv() {
            events.push((i, e));
        }
    }
    events.sort_by_key(|(_, e)| e.at);
    print!("{}", timeline(fleet, m, fault_at, fault_wall, &events));
    if !moved {
        let switched = events.iter().any(|(_, e)| matches!(&e.kind, AgentEventKind::Sentinel(o) if matches!(o.event, Event::SwitchMaster { .. })));
        let step = if !switched {
            "sentinel switches to a new master"
        } else if fleet.holders().len() != 1 {
            "the new master's agent binds the vip (and only it)"
        } else {
            "the cloud moves the havip to the new master"
        };
        return Err(fail(
            step,
            format!(
                "holders {:?}, cloud holder {:?}\n{}",
                fleet.holders(),
                fleet.cloud_holder(),
                fleet.lab.logs_tail(10)
            ),
        ));
    }
    let new = fleet.holders()[0];
    println!(
        "\nresult: node{} holds the vip and the cloud agrees; node{} released it.",
        new + 1,
        m + 1
    );
    Ok(())
}

/// The failover as a readable table of millisecond offsets from the fault.
fn timeline(
    fleet: &Fleet,
    old: usize,
    fault_at: Instant,
    fault_wall: SystemTime,
    events: &[(usize, AgentEvent)],
) -> String {
    let ms = |at: Instant| -> f64 {
        if at >= fault_at {
            (at - fault_at).as_secs_f64() * 1e3
        } else {
            -((fault_at - at).as_secs_f64() * 1e3)
        }
    };
    let wall_ms = |at: SystemTime| -> f64 {
        match at.duration_since(fault_wall) {
            Ok(d) => d.as_secs_f64() * 1e3,
            Err(e) => -(e.duration().as_secs_f64() * 1e3),
        }
    };
    let mut rows: Vec<(f64, String)> =
        vec![(0.0, format!("fault: redis on node{} killed", old + 1))];
    let mut seen_sentinel = std::collections::HashSet::new();
    for (i, e) in events {
        let who = format!("node{}", i + 1);
        match &e.kind {
            AgentEventKind::Sentinel(o) => {
                // Each agent sees every Sentinel's events; show each event once, from the first agent.
                let key = (o.sentinel.clone(), o.channel.clone(), o.payload.clone());
                if !seen_sentinel.insert(key) {
                    continue;
                }
                let label = match &o.event {
                    Event::SwitchMaster { new, .. } => {
                        format!("sentinel switch: +switch-master to {}:{}", new.0, new.1)
                    }
                    Event::PromotedSlave { addr, .. } => {
                        format!("sentinel: +promoted-slave {}:{}", addr.0, addr.1)
                    }
                    _ => format!("sentinel: {}", o.channel),
                };
                if matches!(
                    o.channel.as_str(),
                    "+sdown"
                        | "-sdown"
                        | "+config-update-from"
                        | "+failover-state-reconf-slaves"
                        | "+slave-reconf-sent"
                ) {
                    continue;
                }
                rows.push((ms(e.at), format!("{label}  (from sentinel {})", o.sentinel)));
            }
            AgentEventKind::Decision {
                desired: true,
                actions,
                ..
            } if !actions.is_empty() => {
                rows.push((
                    ms(e.at),
                    format!(
                        "{who} agent decision: this node is the newest master, claim ({})",
                        e.failover_id.clone().unwrap_or_default()
                    ),
                ));
            }
            AgentEventKind::Claim(Step::Associated) => rows.push((
                ms(e.at),
                format!("{who}: drift-range association (AssociateHaVipInstance)"),
            )),
            AgentEventKind::Claim(Step::Bound { already: false }) => {
                rows.push((ms(e.at), format!("{who}: vip bound")))
            }
            AgentEventKind::Claim(Step::Announced { frames: 2 }) => {
                rows.push((ms(e.at), format!("{who}: announce (first gratuitous ARP)")))
            }
            AgentEventKind::Claim(Step::Confirmed) => rows.push((
                ms(e.at),
                format!(
                    "{who}: cloud confirms (DescribeHaVips names {})",
                    fleet.nodes[*i].instance_id
                ),
            )),
            AgentEventKind::Released { reason } => {
                rows.push((ms(e.at), format!("{who}: vip released ({reason})")))
            }
            _ => {}
        }
    }
    for mv in fleet.cloud.moves() {
        let t = wall_ms(mv.at);
        if t >= 0.0 {
            rows.push((
                t,
                format!(
                    "fake cloud: havip moved {} -> {}",
                    mv.from.as_deref().unwrap_or("-"),
                    mv.to
                ),
            ));
        }
    }
    for r in fleet.cloud.write_requests() {
        let t = wall_ms(r.at);
        if t < 0.0 && r.action == "AssociateHaVipInstance" {
            rows.push((
                t,
                format!(
                    "before the fault: {} (the agent adds its instance ahead of any failover)",
                    r.action
                ),
            ));
        }
    }
    rows.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut out = String::from("timeline (ms from the fault)\n");
    for (t, what) in rows {
        let _ = writeln!(out, "{t:>10.1}  {what}");
    }
    out
}
