//! A simulated interface on a simulated VPC: what the demo (without root) and in-process tests bind on.
//!
//! Owns the link between a [`RecordingNet`] and a [`FakeCloud`]: every announce round this node sends
//! reaches the fake as a gratuitous ARP from this node's MAC, so the fake moves the HAVIP exactly as the
//! VPC would (only for in-range instances). It does not touch the kernel.

use std::net::Ipv4Addr;
use std::sync::Arc;

use crate::fake::FakeCloud;
use crate::recording::RecordingNet;
use havip_agent::config::VipCidr;
use havip_agent::net::{Change, LocalNet, NetError};

/// A [`RecordingNet`] whose announcements are seen by a [`FakeCloud`].
#[derive(Debug, Clone)]
pub struct FakeVpcNet {
    inner: Arc<RecordingNet>,
    cloud: FakeCloud,
}

impl FakeVpcNet {
    /// A simulated interface `ifname` with `mac`, on the VPC `cloud`. Register the MAC with
    /// [`FakeCloud::add_instance`] so the fake knows whose GARP it is.
    pub fn new(ifname: &str, mac: [u8; 6], cloud: FakeCloud) -> Self {
        Self {
            inner: Arc::new(RecordingNet::new(ifname).with_mac(mac)),
            cloud,
        }
    }

    /// The recording underneath, to inspect what was done.
    pub fn recording(&self) -> &RecordingNet {
        &self.inner
    }
}

#[async_trait::async_trait]
impl LocalNet for FakeVpcNet {
    fn interface(&self) -> &str {
        self.inner.interface()
    }

    fn simulated(&self) -> bool {
        true
    }

    async fn is_bound(&self, vip: VipCidr) -> Result<bool, NetError> {
        self.inner.is_bound(vip).await
    }

    async fn bind(&self, vip: VipCidr) -> Result<Change, NetError> {
        self.inner.bind(vip).await
    }

    async fn unbind(&self, vip: VipCidr) -> Result<Change, NetError> {
        self.inner.unbind(vip).await
    }

    async fn announce_round(&self, vip: Ipv4Addr) -> Result<u32, NetError> {
        let frames = self.inner.announce_round(vip).await?;
        // Like the VPC: a GARP for an address this node does not hold moves nothing.
        if self.inner.bound().iter().any(|b| b.addr == vip) {
            self.cloud.garp(self.inner.mac(), vip);
        }
        Ok(frames)
    }
}
