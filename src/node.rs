//! This node's identity: its CVM instance id and the address Sentinel reports for its Redis.
//!
//! Owns resolving `"auto"` through the metadata service. It does not talk to the VPC API.

use std::net::IpAddr;

use crate::config::{AutoOr, Config};
use crate::metadata::{MetadataClient, MetadataError};

/// Who this node is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The CVM instance id (or ENI id with `instance_type = "ENI"`).
    pub instance_id: String,
    /// This host's Redis address as Sentinel reports it.
    pub address: IpAddr,
}

/// Resolves `node.instance_id` and `node.address`, asking the metadata service only for `"auto"` values.
pub async fn resolve_identity(
    cfg: &Config,
    metadata: &MetadataClient,
) -> Result<Identity, MetadataError> {
    let instance_id = match &cfg.node.instance_id {
        AutoOr::Value(v) => v.clone(),
        AutoOr::Auto => metadata.instance_id().await?,
    };
    let address = match cfg.node.address {
        AutoOr::Value(v) => v,
        AutoOr::Auto => IpAddr::V4(metadata.local_ipv4().await?),
    };
    Ok(Identity {
        instance_id,
        address,
    })
}
