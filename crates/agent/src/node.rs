//! This node's identity: its CVM instance id (or, with `instance_type = "ENI"`, its ENI id) and the address
//! Sentinel reports for its Redis.
//!
//! Owns resolving `"auto"` through the metadata service, and in ENI mode through the MAC of
//! `node.interface` (metadata `network/interfaces/macs/<mac>/eni-id`). It does not talk to the VPC API.

use std::net::IpAddr;

use crate::config::{AutoOr, Config, InstanceType};
use crate::metadata::{MetadataClient, MetadataError, format_mac};
use crate::net::KernelNet;

/// Who this node is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The CVM instance id (or ENI id with `instance_type = "ENI"`).
    pub instance_id: String,
    /// This host's Redis address as Sentinel reports it.
    pub address: IpAddr,
}

/// Why this node's identity could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The metadata service failed (transient when it did not answer).
    #[error(transparent)]
    Metadata(#[from] MetadataError),
    /// `"auto"` cannot be resolved on this host: a config problem, the message says what to write.
    #[error("{0}")]
    Config(String),
}

/// Resolves `node.instance_id` and `node.address`, asking the metadata service only for `"auto"` values.
/// In ENI mode, `instance_id = "auto"` is the ENI of `node.interface` (see [`eni_of_interface`]).
pub async fn resolve_identity(
    cfg: &Config,
    metadata: &MetadataClient,
) -> Result<Identity, IdentityError> {
    let instance_id = match (&cfg.node.instance_id, cfg.node.instance_type) {
        (AutoOr::Value(v), _) => v.clone(),
        (AutoOr::Auto, InstanceType::Cvm) => metadata.instance_id().await?,
        (AutoOr::Auto, InstanceType::Eni) => {
            let mac = interface_mac(&cfg.node.interface).await?;
            eni_of_interface(metadata, &cfg.node.interface, mac).await?
        }
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

/// What to write instead of `"auto"`, appended to every ENI resolution error.
const WRITE_THE_ENI: &str = "write the ENI's id instead, e.g. instance_id = \"eni-xxxxxxxx\" \
     (the console's ENI list, or `tccli vpc DescribeNetworkInterfaces`)";

/// The MAC address of `ifname` in this network namespace (netlink; needs no capability).
pub async fn interface_mac(ifname: &str) -> Result<[u8; 6], IdentityError> {
    KernelNet::open(ifname).await.map(|n| n.mac()).map_err(|e| {
        IdentityError::Config(format!(
            "node.instance_id = \"auto\" with node.instance_type = \"ENI\" reads the MAC of \
                 node.interface {ifname:?}: {e}; {WRITE_THE_ENI}"
        ))
    })
}

/// The ENI id of the interface with `mac`, from metadata `network/interfaces/macs/<mac>/eni-id`. A missing
/// or malformed value is a config error saying what to write; a metadata service that does not answer is
/// a (transient) metadata error.
pub async fn eni_of_interface(
    metadata: &MetadataClient,
    ifname: &str,
    mac: [u8; 6],
) -> Result<String, IdentityError> {
    let mac_text = format_mac(mac);
    let path = format!("network/interfaces/macs/{mac_text}/eni-id");
    let url = metadata.url(&path);
    match metadata.get(&path).await? {
        Some(v) if v.trim().starts_with("eni-") && !v.trim().contains(char::is_whitespace) => {
            Ok(v.trim().to_owned())
        }
        Some(v) => Err(IdentityError::Config(format!(
            "node.instance_id = \"auto\" with node.instance_type = \"ENI\": metadata {url} returned \
             {v:?}, not an ENI id; {WRITE_THE_ENI}"
        ))),
        None => Err(IdentityError::Config(format!(
            "node.instance_id = \"auto\" with node.instance_type = \"ENI\": the metadata service knows no \
             ENI with the MAC {mac_text} of node.interface {ifname:?} ({url} is missing); {WRITE_THE_ENI}"
        ))),
    }
}

/// Whether `eni_id` is this instance's primary ENI: the ENI of the instance's primary MAC (metadata `mac`,
/// eth0's device address). Primary ENIs cannot join a drift range ("主网卡暂不支持绑定", HAVIP console guide
/// 215/36694). `Ok(None)` when the metadata service does not list an ENI id for the primary MAC.
pub async fn is_primary_eni(
    metadata: &MetadataClient,
    eni_id: &str,
) -> Result<Option<bool>, MetadataError> {
    let mac = metadata.mac().await?;
    let primary = metadata
        .get(&format!("network/interfaces/macs/{mac}/eni-id"))
        .await?;
    Ok(primary.map(|p| p.trim() == eni_id))
}
