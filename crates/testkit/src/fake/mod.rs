//! A stateful fake of the Tencent Cloud VPC API and CVM metadata service, for tests, the demo and the lab.
//!
//! Owns: the fake API (`vpc`: HAVIPs, drift range, holder moves, fault injection, request log), its
//! per-action rate limit (`limits`), the platform's move delay and per-NIC GARP rate limit (`moves`), a TCP
//! front that makes new connections slow and closes idle ones like a real server (`front`), an independent
//! TC3 verifier (`verify`), fake metadata servers (`metadata`) and a GARP watcher that moves holders when a
//! real gratuitous ARP is seen on an interface (`garp_watch`). It does not own the client
//! side (`havip_agent::cloud`, `havip_agent::tc3`, `havip_agent::metadata`) and never calls it.

pub mod front;
pub mod garp_watch;
pub mod limits;
pub mod metadata;
pub mod moves;
pub mod verify;
pub mod vpc;
pub mod vpc_net;

pub use garp_watch::{GarpSeen, GarpWatch, watch_garp};
pub use metadata::{FakeMetadata, MetadataEni, MetadataSpec, RoleCredentials};
pub use moves::DEFAULT_GARP_RATE_LIMIT;
pub use vpc::{
    Association, FakeCloud, Fault, FaultKind, GarpOutcome, HavipSnapshot, HavipSpec, HolderMove,
    InstanceType, RecordedRequest, ServerTime, eni_id_for,
};
pub use vpc_net::FakeVpcNet;
