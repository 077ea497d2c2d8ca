//! The subnet rule on the real kernel: `KernelNet::bind` (the bind of the daemon and of `migrate-havip`)
//! refuses a VIP that is not inside the subnet of an address already on the interface, with that subnet's
//! prefix, and changes nothing. Each test has its own network namespace (198.18.0.0/15). Needs root.

use havip_agent::config::VipCidr;
use havip_agent::net::{Change, KernelNet, LocalNet, NetError};
use havip_testkit::testbed::netns::Netns;

/// A namespace whose `eth0` carries the node's address 198.18.0.2/24.
fn node_ns(test: &str) -> Netns {
    let ns = Netns::new(test).expect("creating a network namespace (run the tests as root)");
    ns.veth_pair_inside("eth0", "peer0").unwrap();
    ns.add_addr("eth0", "198.18.0.2/24").unwrap();
    ns
}

fn bind(ns: &Netns, vip: &str) -> Result<Change, NetError> {
    let vip: VipCidr = vip.parse().unwrap();
    ns.block_on(|| async move {
        let net = KernelNet::open("eth0").await.expect("open eth0");
        net.bind(vip).await
    })
}

#[test]
fn a_vip_outside_the_interfaces_subnets_is_refused_with_what_was_found() {
    struct Row {
        name: &'static str,
        vip: &'static str,
    }
    let ns = node_ns("subnet-no");
    for r in [
        Row {
            name: "a /1 around the node's address",
            vip: "198.18.0.10/1",
        },
        Row {
            name: "a /32 inside the subnet",
            vip: "198.18.0.10/32",
        },
        Row {
            name: "another subnet",
            vip: "198.19.7.10/24",
        },
    ] {
        match bind(&ns, r.vip) {
            Err(e @ NetError::VipOutsideSubnet { .. }) => {
                let msg = e.to_string();
                for want in [r.vip, "\"eth0\"", "addresses found: 198.18.0.2/24"] {
                    assert!(msg.contains(want), "{}: {want} not in {msg}", r.name);
                }
                assert!(e.is_permanent(), "{}", r.name);
            }
            other => panic!("{}: want VipOutsideSubnet, got {other:?}", r.name),
        }
        assert_eq!(
            ns.ipv4_addrs("eth0").unwrap(),
            ["198.18.0.2/24"],
            "{}: nothing was bound",
            r.name
        );
    }
}

#[test]
fn a_vip_inside_the_subnet_with_its_prefix_is_bound() {
    let ns = node_ns("subnet-ok");
    assert_eq!(bind(&ns, "198.18.0.10/24").unwrap(), Change::Applied);
    assert_eq!(
        ns.ipv4_addrs("eth0").unwrap(),
        ["198.18.0.2/24", "198.18.0.10/24"]
    );
}

#[test]
fn an_interface_without_addresses_takes_no_vip_and_says_so() {
    let ns = Netns::new("subnet-none").expect("creating a network namespace");
    ns.veth_pair_inside("eth0", "peer0").unwrap();
    let e = bind(&ns, "198.18.0.10/24").unwrap_err();
    assert!(e.to_string().contains("addresses found: none"), "{e}");
    assert!(ns.ipv4_addrs("eth0").unwrap().is_empty());
}
