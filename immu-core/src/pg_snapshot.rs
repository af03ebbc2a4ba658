//! PostgreSQL snapshots (`pg_snapshot`): which transactions had committed at one point.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A PostgreSQL snapshot, as `pg_current_snapshot()` gives it (`xmin:xmax:xip,...`): exactly
/// which transactions had committed when it was taken.
///
/// Every version records its transaction (`immu_xid`, a 64-bit `xid8`), so a snapshot names
/// exactly the versions it saw: those whose transaction [is visible](Self::is_visible) in it.
/// Snapshots taken later see a superset (a committed transaction stays committed, and transaction
/// ids keep growing across restarts and crashes). Digests ([`crate::ledger`]) record one.
///
/// ```
/// use immu_core::PgSnapshot;
/// let s: PgSnapshot = "100:104:100,102".parse()?;
/// assert!(s.is_visible(99) && s.is_visible(101) && s.is_visible(103));
/// assert!(!s.is_visible(100) && !s.is_visible(102) && !s.is_visible(104));
/// assert_eq!(s.to_string(), "100:104:100,102");
/// # Ok::<(), immu_core::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PgSnapshot {
    xmin: u64,
    xmax: u64,
    xip: Vec<u64>,
}

impl PgSnapshot {
    /// The snapshot that has seen nothing: no transaction is visible in it.
    pub fn nothing() -> Self {
        PgSnapshot { xmin: 0, xmax: 0, xip: Vec::new() }
    }

    /// The oldest transaction still running when it was taken: every transaction before it had
    /// ended.
    pub fn xmin(&self) -> u64 {
        self.xmin
    }

    /// The first transaction id not yet assigned when it was taken: none from it on is visible.
    pub fn xmax(&self) -> u64 {
        self.xmax
    }

    /// The transactions between `xmin` and `xmax` that were still running (sorted).
    pub fn in_progress(&self) -> &[u64] {
        &self.xip
    }

    /// Whether transaction `xid` had committed when the snapshot was taken, given that it
    /// committed at all (a version that is stored was committed): PostgreSQL's
    /// `pg_visible_in_snapshot`.
    pub fn is_visible(&self, xid: u64) -> bool {
        xid < self.xmin || (xid < self.xmax && self.xip.binary_search(&xid).is_err())
    }
}

impl fmt::Display for PgSnapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:", self.xmin, self.xmax)?;
        for (i, x) in self.xip.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{x}")?;
        }
        Ok(())
    }
}

impl FromStr for PgSnapshot {
    type Err = crate::Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = || crate::Error::InvalidSnapshot { text: s.to_owned() };
        let mut parts = s.split(':');
        let (Some(xmin), Some(xmax), Some(xip), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(invalid());
        };
        let xmin: u64 = xmin.parse().map_err(|_| invalid())?;
        let xmax: u64 = xmax.parse().map_err(|_| invalid())?;
        let mut list = Vec::new();
        if !xip.is_empty() {
            for x in xip.split(',') {
                list.push(x.parse::<u64>().map_err(|_| invalid())?);
            }
        }
        list.sort_unstable();
        list.dedup();
        if xmin > xmax || list.iter().any(|x| *x < xmin || *x >= xmax) {
            return Err(invalid());
        }
        Ok(PgSnapshot { xmin, xmax, xip: list })
    }
}

impl TryFrom<String> for PgSnapshot {
    type Error = crate::Error;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<PgSnapshot> for String {
    fn from(s: PgSnapshot) -> String {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_postgres_prints_and_refuses_the_rest() {
        let s: PgSnapshot = "5:5:".parse().unwrap();
        assert!(s.is_visible(4) && !s.is_visible(5));
        assert_eq!(s.to_string(), "5:5:");
        for bad in ["", "1:2", "1:2:3:4", "x:2:", "3:2:", "1:5:7", "1:5:0", "1:5:2,a"] {
            assert!(bad.parse::<PgSnapshot>().is_err(), "{bad}");
        }
        assert!(!PgSnapshot::nothing().is_visible(0));
    }
}
