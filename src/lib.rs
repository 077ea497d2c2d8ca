//! havip-agent: keeps a Tencent Cloud HAVIP on the current Redis Sentinel master.
//!
//! The library owns all logic; the binaries in `src/bin/` parse arguments, set up logging and map results to
//! exit codes.

pub mod check;
pub mod clock;
pub mod cloud;
pub mod config;
pub mod credentials;
pub mod fake;
pub mod logging;
pub mod metadata;
pub mod net;
pub mod secret;
pub mod sentinel;
pub mod tc3;
