//! havip-agent: keeps a Tencent Cloud HAVIP on the current Redis Sentinel master.
//!
//! The library owns all logic; the binaries in `src/bin/` parse arguments, set up logging and map results to
//! exit codes.

pub mod act;
pub mod alerts;
pub mod boot;
pub mod check;
pub mod claim;
pub mod clock;
pub mod cloud;
pub mod config;
pub mod control;
pub mod credentials;
pub mod daemon;
pub mod fence;
pub mod footprint;
pub mod fuzzing;
pub mod hooks;
pub mod http;
pub mod logging;
pub mod metadata;
pub mod metrics;
pub mod migrate;
pub mod net;
pub mod node;
pub mod privs;
pub mod process;
pub mod reconcile;
pub mod secret;
pub mod sentinel;
pub mod status;
pub mod status_cmd;
pub mod tc3;
pub mod tls;
