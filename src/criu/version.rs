//! CRIU version numbers and the minimum ferry needs (plain values: the
//! check that turns a version into an error lives with the client).
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A CRIU release, compared as (major, minor, sublevel).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Version {
    pub major: u32,
    pub minor: u32,
    pub sublevel: u32,
}

/// The oldest CRIU known to work with ferry (and with current kernels).
pub const MIN_VERSION: Version = Version::new(4, 1, 0);

impl Version {
    pub const fn new(major: u32, minor: u32, sublevel: u32) -> Version {
        Version {
            major,
            minor,
            sublevel,
        }
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.sublevel)
    }
}

/// Error from parsing a version string such as "4.2.1".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid CRIU version {0:?}: expected MAJOR.MINOR[.SUBLEVEL]")]
pub struct ParseVersionError(pub String);

impl FromStr for Version {
    type Err = ParseVersionError;

    fn from_str(s: &str) -> std::result::Result<Version, ParseVersionError> {
        let bad = || ParseVersionError(s.to_string());
        let mut parts = s.trim().split('.');
        let mut next = |required: bool| -> std::result::Result<u32, ParseVersionError> {
            match parts.next() {
                Some(p) => p.parse().map_err(|_| bad()),
                None if required => Err(bad()),
                None => Ok(0),
            }
        };
        let v = Version::new(next(true)?, next(true)?, next(false)?);
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordering_is_numeric_per_component() {
        assert!(Version::new(4, 10, 0) > Version::new(4, 9, 9));
        assert!(Version::new(4, 2, 1) > Version::new(4, 2, 0));
        assert!(Version::new(3, 17, 1) < MIN_VERSION);
        assert!(Version::new(5, 0, 0) > Version::new(4, 99, 99));
        assert_eq!(Version::new(4, 1, 0), MIN_VERSION);
    }

    #[test]
    fn parse() {
        assert_eq!("4.2.1".parse::<Version>().unwrap(), Version::new(4, 2, 1));
        assert_eq!("4.2".parse::<Version>().unwrap(), Version::new(4, 2, 0));
        assert!("4".parse::<Version>().is_err());
        assert!("4.x".parse::<Version>().is_err());
        assert!("4.2.1.7".parse::<Version>().is_err());
        assert_eq!(Version::new(4, 2, 1).to_string(), "4.2.1");
    }
}
