//! Blocks of hours: the coarser rollups a long range is read from, so that its unique counts
//! and percentiles merge a few sketches per bucket instead of one per hour.
//!
//! Blocks lie inside a UTC day: the whole day (24 hours), or an aligned run of 16, 8, 4, 2 or 1
//! hours — 16 only at midnight, 8 at hours 0, 8 and 16, 4 and 2 at their multiples. Any run of
//! whole hours is tiled by whole days plus at most five blocks in the partial day it starts in
//! (from 01:00: 1, 2, 4, 8 and 8 hours, as 16 starts only at midnight) and four in the one it
//! ends in (the binary digits of its hour count), so a day of any zone whose offset is a whole
//! number of hours (Lagos, New York, DST or not) is at most six blocks, and a UTC day is one. A block is
//! built from its two halves (the day from its 16 and 8), bottom-up from the hours, whenever one
//! of its hours is rolled up again.

use chrono::{DateTime, Duration, Timelike, Utc};

/// Block lengths below a day, largest first.
const LENGTHS: [u32; 5] = [16, 8, 4, 2, 1];

/// A block of hours: its first hour and its length (1, 2, 4, 8, 16 or 24).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Block {
    pub start: DateTime<Utc>,
    pub hours: u32,
}

impl Block {
    pub fn end(&self) -> DateTime<Utc> {
        self.start + Duration::hours(i64::from(self.hours))
    }

    /// The block's two halves (the day: its 16 and its 8), `None` for an hour.
    pub fn children(&self) -> Option<[Block; 2]> {
        let (a, b) = match self.hours {
            24 => (16, 8),
            16 | 8 | 4 | 2 => (self.hours / 2, self.hours / 2),
            _ => return None,
        };
        Some([
            Block {
                start: self.start,
                hours: a,
            },
            Block {
                start: self.start + Duration::hours(i64::from(a)),
                hours: b,
            },
        ])
    }
}

/// Whether a block of `len` hours may start at `hour_of_day`.
fn aligned(hour_of_day: u32, len: u32) -> bool {
    match len {
        16 => hour_of_day == 0,
        _ => hour_of_day % len == 0 && hour_of_day + len <= 24,
    }
}

/// Tiles the whole hours `[from, to)` (both on the hour) with the fewest blocks, in order.
pub fn tile(from: DateTime<Utc>, to: DateTime<Utc>) -> Vec<Block> {
    let mut out = Vec::new();
    let mut at = from;
    while at < to {
        let hour = at.hour();
        let left = (to - at).num_hours();
        if hour == 0 && left >= 24 {
            out.push(Block {
                start: at,
                hours: 24,
            });
            at += Duration::hours(24);
            continue;
        }
        let len = LENGTHS
            .into_iter()
            .find(|&len| aligned(hour, len) && i64::from(len) <= left)
            .unwrap_or(1);
        out.push(Block {
            start: at,
            hours: len,
        });
        at += Duration::hours(i64::from(len));
    }
    out
}

/// Every block longer than an hour that holds `hour`, smallest first: the ones to build again,
/// in that order, when the hour is rolled up again.
pub fn ancestors(hour: DateTime<Utc>) -> Vec<Block> {
    let day = hour - Duration::hours(i64::from(hour.hour()));
    let h = hour.hour();
    let mut out = Vec::with_capacity(5);
    for len in [2u32, 4, 8, 16] {
        if len == 16 && h >= 16 {
            continue;
        }
        let start = h - h % len;
        out.push(Block {
            start: day + Duration::hours(i64::from(start)),
            hours: len,
        });
    }
    out.push(Block {
        start: day,
        hours: 24,
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use proptest::prelude::*;

    fn at(day: u32, hour: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, day, hour, 0, 0)
            .single()
            .unwrap()
    }

    #[test]
    fn a_utc_day_is_one_block_and_a_zone_day_a_few() {
        assert_eq!(
            tile(at(2, 0), at(3, 0)),
            vec![Block {
                start: at(2, 0),
                hours: 24
            }]
        );
        // Lagos (UTC+1): 23:00 to 23:00.
        let lagos = tile(at(1, 23), at(2, 23));
        assert_eq!(
            lagos.iter().map(|b| b.hours).collect::<Vec<_>>(),
            vec![1, 16, 4, 2, 1]
        );
        // New York in winter (UTC−5): 05:00 to 05:00.
        let ny = tile(at(2, 5), at(3, 5));
        assert_eq!(
            ny.iter().map(|b| b.hours).collect::<Vec<_>>(),
            vec![1, 2, 8, 8, 4, 1]
        );
        // 30 days: 30 blocks when they are UTC days.
        assert_eq!(tile(at(1, 0), at(1, 0) + Duration::days(30)).len(), 30);
    }

    #[test]
    fn an_hour_has_its_blocks_up_to_its_day() {
        let blocks = ancestors(at(2, 13));
        let shapes: Vec<(u32, u32)> = blocks.iter().map(|b| (b.start.hour(), b.hours)).collect();
        assert_eq!(shapes, vec![(12, 2), (12, 4), (8, 8), (0, 16), (0, 24)]);
        let late = ancestors(at(2, 21));
        let shapes: Vec<(u32, u32)> = late.iter().map(|b| (b.start.hour(), b.hours)).collect();
        assert_eq!(shapes, vec![(20, 2), (20, 4), (16, 8), (0, 24)]);
        // Every ancestor is built from children that hold the hour or are its siblings.
        for b in ancestors(at(2, 21)) {
            let [x, y] = b.children().unwrap();
            assert_eq!((x.start, y.end()), (b.start, b.end()));
            assert_eq!(x.end(), y.start);
        }
    }

    #[test]
    fn a_day_of_any_whole_hour_zone_is_at_most_six_blocks() {
        let worst = (0..24)
            .map(|h| tile(at(1, h), at(2, h)).len())
            .max()
            .unwrap();
        assert_eq!(worst, 6);
        // The start side's worst case: 01:00 to midnight.
        let shapes: Vec<u32> = tile(at(1, 1), at(2, 0)).iter().map(|b| b.hours).collect();
        assert_eq!(shapes, vec![1, 2, 4, 8, 8]);
    }

    proptest! {
        /// The blocks tile the range exactly, in order, each aligned inside its UTC day, with at
        /// most five blocks in the partial day at the start and four in the one at the end.
        #[test]
        fn blocks_tile_any_run_of_hours(start in 0i64..2_000, len in 0i64..2_000) {
            let base = at(1, 0);
            let from = base + Duration::hours(start);
            let to = from + Duration::hours(len);
            let blocks = tile(from, to);
            let mut at_ = from;
            for b in &blocks {
                prop_assert_eq!(b.start, at_);
                prop_assert!(b.hours == 24 || aligned(b.start.hour(), b.hours));
                prop_assert!(b.hours != 24 || b.start.hour() == 0);
                at_ = b.end();
            }
            prop_assert_eq!(at_, to);
            let partial = blocks.iter().filter(|b| b.hours < 24).count();
            prop_assert!(partial <= 9, "{} partial blocks", partial);
        }
    }
}
