//! Test and demo beds: real processes and namespaces, always cleaned up.

pub mod agents;
pub mod fake_sentinel;
pub mod inproc;
pub mod logs;
pub mod netns;
pub mod redis;
