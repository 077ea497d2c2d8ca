//! Typed requests and answers of the VPC actions the agent uses, and their wire forms.
//!
//! Answers are decoded leniently: unknown fields are ignored, `null` and missing fields take defaults,
//! `State` accepts any text, and the API's placeholders (`""` for "no holder", `0000-00-00 00:00:00` for
//! "never moved") become `None`.

use std::fmt;

use serde::{Deserialize, Serialize};

pub use crate::config::InstanceType;

/// One HAVIP as `DescribeHaVips` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HaVip {
    /// `HaVipId`, e.g. `havip-9o233uri`.
    pub havip_id: String,
    /// `HaVipName`.
    pub name: String,
    /// `Vip`: the virtual IP address, without a prefix length.
    pub vip: String,
    /// `VpcId`.
    pub vpc_id: String,
    /// `SubnetId`.
    pub subnet_id: String,
    /// `InstanceId`: the CVM currently holding the VIP; `None` when unbound (`""`).
    pub instance_id: Option<String>,
    /// `NetworkInterfaceId`: the ENI currently holding the VIP; `None` when unbound (`""`).
    pub network_interface_id: Option<String>,
    /// `AddressIp`: the EIP bound to the HAVIP, if any.
    pub address_ip: Option<String>,
    /// `State`, parsed leniently.
    pub state: HaVipState,
    /// `CheckAssociate`: drift-range limiting is on, so only instances in [`HaVip::associations`] can take
    /// the VIP with a gratuitous ARP. Missing means off (HAVIPs created before the feature).
    pub check_associate: bool,
    /// `HaVipAssociationSet`: the drift range.
    pub associations: Vec<HaVipAssociation>,
    /// `FlushedTime`: when a GARP last moved the VIP; `None` when it never moved (`0000-00-00 00:00:00`).
    pub flushed_time: Option<String>,
}

impl HaVip {
    /// A HAVIP that nothing holds: `havip_id` with `vip`, no holder and no EIP, state `UNBOUND`, drift-range
    /// limiting on with an empty range, other fields empty. A base to set the fields that matter on:
    /// `HaVip { address_ip: Some(eip), ..HaVip::unbound(id, vip) }`.
    pub fn unbound(havip_id: impl Into<String>, vip: impl Into<String>) -> HaVip {
        HaVip {
            havip_id: havip_id.into(),
            name: String::new(),
            vip: vip.into(),
            vpc_id: String::new(),
            subnet_id: String::new(),
            instance_id: None,
            network_interface_id: None,
            address_ip: None,
            state: HaVipState::Unbound,
            check_associate: true,
            associations: Vec::new(),
            flushed_time: None,
        }
    }

    /// Whether `instance_id` (a CVM or ENI id) is listed in the drift range. Says nothing about whether the
    /// range is enforced: see [`HaVip::accepts_garp_from`].
    pub fn in_range(&self, instance_id: &str) -> bool {
        self.associations
            .iter()
            .any(|a| a.instance_id == instance_id)
    }

    /// Whether a gratuitous ARP from `instance_id` can move the VIP: drift-range limiting is off, or the
    /// instance is in the range.
    pub fn accepts_garp_from(&self, instance_id: &str) -> bool {
        !self.check_associate || self.in_range(instance_id)
    }

    /// The one holder rule: whether this node, known to the drift range as `id` of type `ty`, holds the VIP.
    ///
    /// The API reports the holder twice: `InstanceId` is the bound CVM and `NetworkInterfaceId` the ENI whose
    /// GARP moved it (SDK field docs: "被绑定的实例ID", "HAVIP关联弹性网卡ID"). In CVM mode the node is a CVM,
    /// so compare `InstanceId`; in ENI mode the node is one ENI, so compare `NetworkInterfaceId` and never
    /// `InstanceId` (an ENI id never appears there, and another ENI of the same CVM is not this node).
    pub fn held_by(&self, ty: InstanceType, id: &str) -> bool {
        self.holder(ty) == Some(id)
    }

    /// The holder as this node would name itself in mode `ty`: the CVM (`InstanceId`) or the ENI
    /// (`NetworkInterfaceId`).
    pub fn holder(&self, ty: InstanceType) -> Option<&str> {
        holder_id(
            ty,
            self.instance_id.as_deref(),
            self.network_interface_id.as_deref(),
        )
    }
}

/// The one holder rule on the two holder fields (shared by [`HaVip`] and the fake's snapshots): in CVM mode
/// the holder is `InstanceId`, in ENI mode `NetworkInterfaceId`.
pub fn holder_id<'a>(
    ty: InstanceType,
    instance_id: Option<&'a str>,
    network_interface_id: Option<&'a str>,
) -> Option<&'a str> {
    match ty {
        InstanceType::Cvm => instance_id,
        InstanceType::Eni => network_interface_id,
    }
}

/// One entry of a drift range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HaVipAssociation {
    /// `InstanceId`: a CVM id (`ins-...`) or ENI id (`eni-...`).
    pub instance_id: String,
    /// `InstanceType`: `CVM` or `ENI` (kept as text: new types must not break decoding).
    pub instance_type: String,
}

/// `State` of a HAVIP. The docs say `AVAILABLE`/`UNBIND`, tccli's examples show `UNBOUND`; anything else
/// is kept as text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HaVipState {
    /// `AVAILABLE`: bound to an instance.
    Available,
    /// `UNBIND` or `UNBOUND`: not bound.
    Unbound,
    /// Any other value, as sent (empty when missing).
    Other(String),
}

impl HaVipState {
    /// Parses a `State` value, ignoring case and surrounding blanks.
    pub fn parse(s: &str) -> Self {
        match s.trim().to_ascii_uppercase().as_str() {
            "AVAILABLE" => HaVipState::Available,
            "UNBIND" | "UNBOUND" => HaVipState::Unbound,
            _ => HaVipState::Other(s.to_owned()),
        }
    }
}

impl fmt::Display for HaVipState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HaVipState::Available => f.write_str("AVAILABLE"),
            HaVipState::Unbound => f.write_str("UNBOUND"),
            HaVipState::Other(s) => f.write_str(s),
        }
    }
}

/// `Status` of an asynchronous task (`DescribeVpcTaskResult`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskStatus {
    /// `SUCCESS`.
    Success,
    /// `RUNNING`.
    Running,
    /// `FAILED`, with the task's `Output` when it has one.
    Failed {
        /// `Output`.
        output: Option<String>,
    },
    /// Any other status, as sent.
    Other(String),
}

impl TaskStatus {
    pub(crate) fn from_wire(status: &str, output: Option<String>) -> Self {
        match status.trim().to_ascii_uppercase().as_str() {
            "SUCCESS" => TaskStatus::Success,
            "RUNNING" => TaskStatus::Running,
            "FAILED" => TaskStatus::Failed {
                output: output.filter(|o| !o.is_empty()),
            },
            _ => TaskStatus::Other(status.to_owned()),
        }
    }
}

// ----- wire forms -----

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct DescribeHaVipsRequest<'a> {
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    pub ha_vip_ids: &'a [String],
    pub offset: u64,
    pub limit: u64,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct DescribeHaVipsResponse {
    #[serde(default)]
    pub ha_vip_set: Option<Vec<WireHaVip>>,
    #[serde(default)]
    pub total_count: Option<u64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct WireHaVip {
    #[serde(default)]
    ha_vip_id: Option<String>,
    #[serde(default)]
    ha_vip_name: Option<String>,
    #[serde(default)]
    vip: Option<String>,
    #[serde(default)]
    vpc_id: Option<String>,
    #[serde(default)]
    subnet_id: Option<String>,
    #[serde(default)]
    network_interface_id: Option<String>,
    #[serde(default)]
    instance_id: Option<String>,
    #[serde(default)]
    address_ip: Option<String>,
    #[serde(default)]
    state: Option<String>,
    #[serde(default)]
    check_associate: Option<bool>,
    #[serde(default)]
    ha_vip_association_set: Option<Vec<WireAssociation>>,
    #[serde(default)]
    flushed_time: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct WireAssociation {
    #[serde(default)]
    instance_id: Option<String>,
    #[serde(default)]
    instance_type: Option<String>,
}

/// `""` (and blanks) mean "none" in HAVIP answers.
fn non_empty(s: Option<String>) -> Option<String> {
    s.filter(|s| !s.trim().is_empty())
}

impl WireHaVip {
    /// The typed form; `None` when the item has no `HaVipId` (it could not be matched to anything).
    pub(crate) fn into_havip(self) -> Option<HaVip> {
        let havip_id = non_empty(self.ha_vip_id)?;
        Some(HaVip {
            havip_id,
            name: self.ha_vip_name.unwrap_or_default(),
            vip: self.vip.unwrap_or_default(),
            vpc_id: self.vpc_id.unwrap_or_default(),
            subnet_id: self.subnet_id.unwrap_or_default(),
            instance_id: non_empty(self.instance_id),
            network_interface_id: non_empty(self.network_interface_id),
            address_ip: non_empty(self.address_ip),
            state: HaVipState::parse(self.state.as_deref().unwrap_or("")),
            check_associate: self.check_associate.unwrap_or(false),
            associations: self
                .ha_vip_association_set
                .unwrap_or_default()
                .into_iter()
                .filter_map(|a| {
                    Some(HaVipAssociation {
                        instance_id: non_empty(a.instance_id)?,
                        instance_type: a.instance_type.unwrap_or_default(),
                    })
                })
                .collect(),
            flushed_time: non_empty(self.flushed_time)
                .filter(|t| !t.trim_start().starts_with("0000-00-00")),
        })
    }
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct AssociationRequest<'a> {
    pub ha_vip_association_set: &'a [AssociationItem<'a>],
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct AssociationItem<'a> {
    pub ha_vip_id: &'a str,
    pub instance_id: &'a str,
    pub instance_type: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct DescribeVpcTaskResultRequest<'a> {
    pub task_id: &'a str,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct DescribeVpcTaskResultResponse {
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub output: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_is_parsed_leniently() {
        assert_eq!(HaVipState::parse("AVAILABLE"), HaVipState::Available);
        assert_eq!(HaVipState::parse("available "), HaVipState::Available);
        assert_eq!(HaVipState::parse("UNBIND"), HaVipState::Unbound);
        assert_eq!(HaVipState::parse("UNBOUND"), HaVipState::Unbound);
        assert_eq!(
            HaVipState::parse("BINDING"),
            HaVipState::Other("BINDING".into())
        );
        assert_eq!(HaVipState::parse(""), HaVipState::Other(String::new()));
    }

    #[test]
    fn placeholders_become_none_and_unknown_fields_are_ignored() {
        let wire: WireHaVip = serde_json::from_str(
            r#"{"HaVipId":"havip-1","Vip":"10.0.0.9","InstanceId":"","NetworkInterfaceId":null,
                "FlushedTime":"0000-00-00 00:00:00","State":"UNBIND","Brand":"new","TagSet":[{"Key":"a"}],
                "HaVipAssociationSet":[{"InstanceId":"ins-1","InstanceType":"CVM","Extra":1},{"InstanceId":""}]}"#,
        )
        .unwrap();
        let h = wire.into_havip().unwrap();
        assert_eq!(h.instance_id, None);
        assert_eq!(h.network_interface_id, None);
        assert_eq!(h.flushed_time, None);
        assert_eq!(h.state, HaVipState::Unbound);
        assert!(!h.check_associate, "missing CheckAssociate means off");
        assert_eq!(
            h.associations,
            vec![HaVipAssociation {
                instance_id: "ins-1".into(),
                instance_type: "CVM".into()
            }]
        );
        assert!(h.in_range("ins-1"));
        assert!(!h.in_range("ins-2"));
        assert!(h.accepts_garp_from("ins-2"), "range not enforced");
    }

    #[test]
    fn held_by_compares_the_instance_in_cvm_mode_and_the_eni_in_eni_mode() {
        // The real API: the CVM in InstanceId, the ENI that announced in NetworkInterfaceId.
        let h = HaVip {
            instance_id: Some("ins-a".into()),
            network_interface_id: Some("eni-a2".into()),
            state: HaVipState::Available,
            ..HaVip::unbound("havip-1", "10.0.0.9")
        };
        assert!(h.held_by(InstanceType::Cvm, "ins-a"));
        assert!(
            !h.held_by(InstanceType::Cvm, "eni-a2"),
            "an ENI id is never a CVM holder"
        );
        assert!(h.held_by(InstanceType::Eni, "eni-a2"));
        assert!(
            !h.held_by(InstanceType::Eni, "ins-a"),
            "ENI mode never compares InstanceId"
        );
        assert!(
            !h.held_by(InstanceType::Eni, "eni-a1"),
            "another ENI of the same CVM"
        );
        assert_eq!(h.holder(InstanceType::Eni), Some("eni-a2"));
        let unbound = HaVip {
            instance_id: None,
            network_interface_id: None,
            ..h
        };
        assert!(!unbound.held_by(InstanceType::Cvm, "ins-a"));
        assert!(!unbound.held_by(InstanceType::Eni, "eni-a2"));
    }

    #[test]
    fn task_status_is_parsed() {
        assert_eq!(TaskStatus::from_wire("SUCCESS", None), TaskStatus::Success);
        assert_eq!(
            TaskStatus::from_wire("RUNNING", Some(String::new())),
            TaskStatus::Running
        );
        assert_eq!(
            TaskStatus::from_wire("FAILED", Some("boom".into())),
            TaskStatus::Failed {
                output: Some("boom".into())
            }
        );
        assert_eq!(
            TaskStatus::from_wire("PAUSED", None),
            TaskStatus::Other("PAUSED".into())
        );
    }
}
