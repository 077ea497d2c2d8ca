//! The failover lab: real Redis + Sentinel on three network-namespace hosts on one bridge, a client writing
//! through the VIP (its traffic goes to the fake cloud's holder, as in the VPC), the fake Tencent Cloud
//! watching the bridge for GARP (moving the HAVIP after its configured delay), and a VIP manager under test
//! (the agent, `migrate-havip`, or the seed's script or keepalived). It runs the scenarios of issue 5 and
//! measures what `shared/reference/baseline.md` measured, the same way.
//!
//! Owns the lab's topology ([`topology`]), its data path ([`datapath`]), the writer ([`client`]), the
//! instruments ([`observe`]), the VIP managers ([`method`]), the scenarios ([`scenario`]), the figures
//! ([`report`]) and the many-masters run of issue 13 ([`scale`]). Used by the
//! `tests/lab_*.rs` tests (correctness) and `benches/lab.rs` (the comparison table). Needs root, iproute2,
//! nftables, arping, redis-server/sentinel/cli and keepalived. It is not part of the agent.

pub mod bench_env;
pub mod client;
pub mod datapath;
pub mod faults;
pub mod idle;
pub mod method;
pub mod observe;
pub mod report;
pub mod scale;
pub mod scenario;
pub mod topology;

pub use method::{Binaries, Method};
pub use report::{Comparison, Losses, RunReport};
pub use scenario::{RunOptions, RunOutcome, Scenario, run};
