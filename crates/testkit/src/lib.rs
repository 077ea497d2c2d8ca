//! havip-agent's test kit: everything that stands in for the world around the agent, and is never shipped.
//!
//! - [`fake`]: the fake Tencent Cloud (VPC API, metadata service, the platform's GARP-driven moves), stricter
//!   than the real one;
//! - [`testbed`]: real processes and namespaces (Redis + Sentinel labs, a scripted Sentinel, in-process
//!   agents, log capture), always cleaned up;
//! - [`recording`]: the in-memory binder ([`recording::RecordingNet`]) the fake and the demo bind on;
//! - [`demo`]: `havip-demo`, the newcomer's failover story and the sandbox.
//!
//! Depends on the product (`havip-agent`); the product depends on it only for its own tests.

pub mod demo;
pub mod fake;
pub mod recording;
pub mod testbed;
