//! Write-ahead log positions in PostgreSQL's `X/Y` text form.

use std::fmt;

/// A WAL position (PostgreSQL's `XLogRecPtr`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Hash)]
pub struct Lsn(pub u64);

impl Lsn {
    /// Parses `16/B374D848`.
    pub fn parse(s: &str) -> Option<Lsn> {
        let (hi, lo) = s.trim().split_once('/')?;
        let hi = u32::from_str_radix(hi, 16).ok()?;
        let lo = u32::from_str_radix(lo, 16).ok()?;
        Some(Lsn((u64::from(hi) << 32) | u64::from(lo)))
    }

    /// Bytes from `self` forward to `ahead`, or 0 when `ahead` is not ahead.
    pub fn bytes_until(self, ahead: Lsn) -> u64 {
        ahead.0.saturating_sub(self.0)
    }

    /// The number of the WAL segment of `segment_size` bytes that holds this position.
    pub fn segment(self, segment_size: u64) -> u64 {
        self.0 / segment_size.max(1)
    }
}

/// The file name of WAL segment `segment` of `segment_size` bytes on timeline `tli`, as
/// PostgreSQL names it in `pg_wal` (`pg_walfile_name`).
pub fn segment_file(tli: u32, segment: u64, segment_size: u64) -> String {
    let per_id = 0x1_0000_0000 / segment_size.max(1);
    format!("{tli:08X}{:08X}{:08X}", segment / per_id, segment % per_id)
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_measures() {
        let l = Lsn::parse("16/B374D848").unwrap();
        assert_eq!(l.0, 0x16_B374_D848);
        assert_eq!(l.to_string(), "16/B374D848");
        assert_eq!(Lsn::parse("0/0"), Some(Lsn(0)));
        assert_eq!(Lsn::parse("nope"), None);
        assert_eq!(Lsn(10).bytes_until(Lsn(25)), 15);
        assert_eq!(Lsn(25).bytes_until(Lsn(10)), 0);
    }

    #[test]
    fn names_segments_as_postgresql_does() {
        const MB16: u64 = 16 << 20;
        let l = Lsn::parse("16/B374D848").unwrap();
        assert_eq!(
            segment_file(1, l.segment(MB16), MB16),
            "0000000100000016000000B3"
        );
        let l = Lsn::parse("0/500D198").unwrap();
        assert_eq!(
            segment_file(3, l.segment(MB16), MB16),
            "000000030000000000000005"
        );
        // 1 GB segments: four per 4 GB.
        let l = Lsn::parse("2/C0000000").unwrap();
        assert_eq!(
            segment_file(2, l.segment(1 << 30), 1 << 30),
            "000000020000000200000003"
        );
    }
}
