//! The `org.ferry.net.veth` annotation: parsing and checking.
use std::collections::HashMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::{Error, Result, VETH_ANNOTATION};

/// Linux interface names are at most 15 bytes (IFNAMSIZ - 1).
const IFNAME_MAX: usize = 15;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VethConfig {
    pub host_if: String,
    pub container_if: String,
    pub address: Option<String>,
    pub host_address: Option<String>,
    pub mac: Option<String>,
}

impl VethConfig {
    /// Reads the `org.ferry.net.veth` annotation; `None` when it is absent.
    pub fn from_annotations(annotations: &HashMap<String, String>) -> Result<Option<VethConfig>> {
        match annotations.get(VETH_ANNOTATION) {
            None => Ok(None),
            Some(v) => VethConfig::parse(v).map(Some),
        }
    }

    /// Parses the annotation value (see the module documentation).
    pub fn parse(value: &str) -> Result<VethConfig> {
        let err = |m: String| Error::Annotation(m);
        let mut host = None;
        let mut container = None;
        let mut address = None;
        let mut host_address = None;
        let mut mac = None;
        for item in value.split(',') {
            let item = item.trim();
            if item.is_empty() {
                return Err(err(
                    "empty item (stray comma?); write key=value pairs separated by single commas"
                        .into(),
                ));
            }
            let Some((key, val)) = item.split_once('=') else {
                return Err(err(format!(
                    "item {item:?} has no '='; write key=value, e.g. host=veth-c1"
                )));
            };
            let slot = match key.trim() {
                "host" => &mut host,
                "container" => &mut container,
                "address" => &mut address,
                "host-address" => &mut host_address,
                "mac" => &mut mac,
                other => {
                    return Err(err(format!(
                        "unknown key {other:?}; allowed keys are host, container, address, host-address, mac"
                    )))
                }
            };
            if slot.is_some() {
                return Err(err(format!(
                    "key {:?} given twice; give it once",
                    key.trim()
                )));
            }
            *slot = Some(val.trim().to_string());
        }
        let host_if = host.ok_or_else(|| {
            err("missing host=<interface>; name the host end, e.g. host=veth-c1".into())
        })?;
        let container_if = container.ok_or_else(|| {
            err("missing container=<interface>; name the container end, e.g. container=eth0".into())
        })?;
        if address.is_none() {
            return Err(err(
                "missing address=<ip/prefix>; give the container end an address, e.g. address=10.0.3.2/30"
                    .into(),
            ));
        }
        let cfg = VethConfig {
            host_if,
            container_if,
            address,
            host_address,
            mac,
        };
        cfg.validate().map_err(|e| match e {
            Error::Link { message, .. } => Error::Annotation(message),
            other => other,
        })?;
        Ok(cfg)
    }

    /// Checks names, addresses and MAC.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Error::Link {
            interface: self.host_if.clone(),
            message: m,
        };
        check_ifname("host", &self.host_if).map_err(bad)?;
        check_ifname("container", &self.container_if).map_err(bad)?;
        let mut families = Vec::new();
        if let Some(a) = &self.address {
            families.push(check_cidr("address", a).map_err(bad)?);
        }
        if let Some(a) = &self.host_address {
            families.push(check_cidr("host-address", a).map_err(bad)?);
        }
        if families.len() == 2 && families[0] != families[1] {
            return Err(bad(
                "address and host-address are of different IP families; use two IPv4 or two IPv6 addresses".into(),
            ));
        }
        if let Some(m) = &self.mac {
            check_mac(m).map_err(bad)?;
        }
        Ok(())
    }

    /// Checks the host end's name before it goes on a command line.
    pub(super) fn check_host_if(&self) -> Result<()> {
        check_ifname("host", &self.host_if).map_err(|m| super::link_err(self, m))
    }
}

fn check_ifname(what: &str, name: &str) -> std::result::Result<(), String> {
    if name.is_empty() || name.len() > IFNAME_MAX {
        return Err(format!(
            "{what} interface name {name:?} must be 1 to {IFNAME_MAX} bytes long; pick a shorter name"
        ));
    }
    if name == "." || name == ".." {
        return Err(format!(
            "{what} interface name {name:?} is reserved; pick another name"
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| *c == '/' || *c == ':' || c.is_whitespace() || c.is_control())
    {
        return Err(format!(
            "{what} interface name {name:?} contains {c:?}; use letters, digits, '-', '_' or '.'"
        ));
    }
    Ok(())
}

/// Returns true for IPv4.
fn check_cidr(what: &str, cidr: &str) -> std::result::Result<bool, String> {
    let Some((ip, prefix)) = cidr.split_once('/') else {
        return Err(format!(
            "{what} {cidr:?} has no prefix length; write it as ip/prefix, e.g. 10.0.3.2/30"
        ));
    };
    let ip: IpAddr = ip.parse().map_err(|_| {
        format!("{what} {cidr:?}: {ip:?} is not an IPv4 or IPv6 address; write e.g. 10.0.3.2/30")
    })?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let prefix: u8 = prefix
        .parse()
        .ok()
        .filter(|p: &u8| *p <= max && !prefix.starts_with('+'))
        .ok_or_else(|| {
            format!("{what} {cidr:?}: prefix length {prefix:?} must be a number from 0 to {max}")
        })?;
    let _ = prefix;
    if ip.is_unspecified() || ip.is_multicast() {
        return Err(format!(
            "{what} {cidr:?} is not a host address; use a unicast address"
        ));
    }
    Ok(ip.is_ipv4())
}

fn check_mac(mac: &str) -> std::result::Result<(), String> {
    let octets: Vec<&str> = mac.split(':').collect();
    let fix = "write six two-digit hex octets like 02:42:ac:11:00:02";
    if octets.len() != 6
        || octets
            .iter()
            .any(|o| o.len() != 2 || !o.chars().all(|c| c.is_ascii_hexdigit()))
    {
        return Err(format!("mac {mac:?} is malformed; {fix}"));
    }
    let first = u8::from_str_radix(octets[0], 16).unwrap_or(0);
    if first & 1 == 1 {
        return Err(format!(
            "mac {mac:?} is a multicast address; clear the lowest bit of the first octet (e.g. 02:...)"
        ));
    }
    if octets.iter().all(|o| *o == "00") {
        return Err(format!("mac {mac:?} is all zeros; {fix}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ann(v: &str) -> HashMap<String, String> {
        HashMap::from([(VETH_ANNOTATION.to_string(), v.to_string())])
    }

    fn parse_err(v: &str) -> String {
        match VethConfig::from_annotations(&ann(v)) {
            Ok(c) => panic!("{v:?} parsed as {c:?}"),
            Err(e) => {
                let s = e.to_string();
                assert!(!s.contains('\n'), "one line: {s}");
                assert!(s.starts_with("annotation org.ferry.net.veth: "), "{s}");
                s
            }
        }
    }

    #[test]
    fn absent_annotation_is_none() {
        assert_eq!(VethConfig::from_annotations(&HashMap::new()).unwrap(), None);
    }

    #[test]
    fn full_and_minimal_forms() {
        let c = VethConfig::from_annotations(&ann(
            "host=veth-c1,container=eth0,address=10.0.3.2/30,host-address=10.0.3.1/30,mac=02:42:ac:11:00:02",
        ))
        .unwrap()
        .unwrap();
        assert_eq!(
            c,
            VethConfig {
                host_if: "veth-c1".into(),
                container_if: "eth0".into(),
                address: Some("10.0.3.2/30".into()),
                host_address: Some("10.0.3.1/30".into()),
                mac: Some("02:42:ac:11:00:02".into()),
            }
        );
        let c = VethConfig::from_annotations(&ann(" host=h , container=c , address=fd00::2/64 "))
            .unwrap()
            .unwrap();
        assert_eq!(c.host_if, "h");
        assert_eq!(c.address.as_deref(), Some("fd00::2/64"));
        assert_eq!(c.host_address, None);
        assert_eq!(c.mac, None);
        // Upper-case hex and a 15-byte name are fine.
        VethConfig::parse(
            "host=abcdefghijklmno,container=c,address=10.1.1.1/32,mac=0A:BB:CC:DD:EE:FF",
        )
        .unwrap();
    }

    #[test]
    fn each_bad_case_names_the_problem() {
        let cases: &[(&str, &str)] = &[
            ("container=c,address=10.0.0.2/30", "missing host="),
            ("host=h,address=10.0.0.2/30", "missing container="),
            ("host=h,container=c", "missing address="),
            (
                "host=h,container=c,address=10.0.0.2/30,colour=red",
                "\"colour\"",
            ),
            (
                "host=h,host=i,container=c,address=10.0.0.2/30",
                "given twice",
            ),
            ("host=h,,container=c,address=10.0.0.2/30", "empty item"),
            ("host=h,container=c,address=10.0.0.2/30,", "empty item"),
            ("host=h,container,address=10.0.0.2/30", "no '='"),
            ("host=,container=c,address=10.0.0.2/30", "1 to 15"),
            (
                "host=abcdefghijklmnop,container=c,address=10.0.0.2/30",
                "1 to 15",
            ),
            ("host=a/b,container=c,address=10.0.0.2/30", "'/'"),
            ("host=h,container=a:b,address=10.0.0.2/30", "':'"),
            ("host=h,container=a b,address=10.0.0.2/30", "' '"),
            ("host=..,container=c,address=10.0.0.2/30", "reserved"),
            ("host=h,container=c,address=10.0.0.2", "no prefix length"),
            (
                "host=h,container=c,address=10.0.0.256/24",
                "not an IPv4 or IPv6",
            ),
            ("host=h,container=c,address=10.0.0.2/33", "0 to 32"),
            ("host=h,container=c,address=fd00::2/129", "0 to 128"),
            ("host=h,container=c,address=10.0.0.2/x", "prefix length"),
            ("host=h,container=c,address=0.0.0.0/0", "not a host address"),
            (
                "host=h,container=c,address=10.0.0.2/30,host-address=fd00::1/64",
                "families",
            ),
            (
                "host=h,container=c,address=10.0.0.2/30,mac=02:42:ac:11:00",
                "malformed",
            ),
            (
                "host=h,container=c,address=10.0.0.2/30,mac=02:42:ac:11:00:zz",
                "malformed",
            ),
            (
                "host=h,container=c,address=10.0.0.2/30,mac=0242.ac11.0002",
                "malformed",
            ),
            (
                "host=h,container=c,address=10.0.0.2/30,mac=01:00:5e:00:00:01",
                "multicast",
            ),
            (
                "host=h,container=c,address=10.0.0.2/30,mac=00:00:00:00:00:00",
                "all zeros",
            ),
        ];
        for (value, needle) in cases {
            let e = parse_err(value);
            assert!(e.contains(needle), "{value:?}: {e:?} lacks {needle:?}");
        }
    }
}
