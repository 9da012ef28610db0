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

/// How far a node's WAL reaches in the cluster's history: its timeline, where that timeline
/// began (0 for timeline 1), and its position. Timeline 0 means unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Position {
    pub timeline: u32,
    pub start: u64,
    pub lsn: u64,
}

impl Position {
    /// How many bytes of the history `theirs` holds this one lacks. PostgreSQL numbers a new
    /// timeline above every one it knew, and history runs along one line of timelines: a
    /// node on an older timeline holds the newer one's history up to where it began (or to
    /// its own position, if that is short of it), and WAL an older timeline has past that
    /// point is on a branch nobody continues, so a node on a newer timeline lacks nothing of
    /// it. An unknown timeline compares by position alone.
    pub fn lacks(self, theirs: Position) -> u64 {
        let same = self.timeline == theirs.timeline || self.timeline == 0 || theirs.timeline == 0;
        if same {
            theirs.lsn.saturating_sub(self.lsn)
        } else if self.timeline < theirs.timeline {
            theirs.lsn.saturating_sub(self.lsn.min(theirs.start))
        } else {
            0
        }
    }

    /// The order to rank candidates by: the newest timeline, then the furthest position.
    pub fn rank(self) -> (u32, u64) {
        (self.timeline, self.lsn)
    }
}

/// Where timeline `tli` ended, from a timeline history file's text (`<parent> <switch
/// point> <reason>` lines).
pub fn switchpoint(history: &str, tli: u32) -> Option<Lsn> {
    history.lines().find_map(|l| {
        let mut it = l.split_whitespace();
        let t: u32 = it.next()?.parse().ok()?;
        (t == tli).then(|| Lsn::parse(it.next()?)).flatten()
    })
}

/// Where the timeline whose history file this is began: its last line's switch point.
pub fn timeline_start(history: &str) -> Option<Lsn> {
    history.lines().rev().find_map(|l| {
        let mut it = l.split_whitespace();
        it.next()?.parse::<u32>().ok()?;
        Lsn::parse(it.next()?)
    })
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
    fn positions_compare_by_timeline_first() {
        let at = |timeline, start, lsn| Position {
            timeline,
            start,
            lsn,
        };
        assert_eq!(at(2, 50, 100).lacks(at(2, 50, 150)), 50);
        assert_eq!(at(2, 50, 150).lacks(at(2, 50, 100)), 0);
        // Further on timeline 1, past where timeline 2 began at 80: nothing there counts.
        assert_eq!(at(2, 80, 100).lacks(at(1, 0, 900)), 0);
        // ...while it lacks timeline 2 from there: 20 bytes.
        assert_eq!(at(1, 0, 900).lacks(at(2, 80, 100)), 20);
        // Short of where timeline 2 began: what it lacks of timeline 1 too.
        assert_eq!(at(1, 0, 60).lacks(at(2, 80, 100)), 40);
        // Unknown timelines: positions alone.
        assert_eq!(at(0, 0, 100).lacks(at(1, 0, 900)), 800);
        assert!(at(2, 80, 100).rank() > at(1, 0, 900).rank());
    }

    #[test]
    fn reads_timeline_history_files() {
        let history = "1\t0/3000158\tno recovery target specified\n\n2\t0/5000A28\tno recovery target specified\n";
        assert_eq!(switchpoint(history, 1), Lsn::parse("0/3000158"));
        assert_eq!(switchpoint(history, 2), Lsn::parse("0/5000A28"));
        assert_eq!(switchpoint(history, 3), None);
        assert_eq!(timeline_start(history), Lsn::parse("0/5000A28"));
        assert_eq!(timeline_start(""), None);
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
