//! Custom metric series, the plain rules of reading them: the query parameters (`name`,
//! `labels`, `agg`), a [`Cell`] of merged figures (rollup rows and raw hours merge the same
//! way), what each aggregation makes of one, and the hour-aligned bucket boundaries that let
//! PostgreSQL group rollup hours into the buckets of [`crate::range`].
//!
//! Plain code: no database, no clock.

use chrono::{DateTime, Duration, Utc};
use serde_json::{Map, Value};

use crate::ingest::{is_metric_name, MAX_LABELS, MAX_NAME};
use crate::range::{bucket_start, next_start, GroupBy, TimeRange};
use crate::sketch::Latency;
use crate::store::ingest::hour_of;

/// How many label sets a query lists at most (the busiest first): enough for a dashboard's
/// filter menu, bounded whatever a label's cardinality.
pub const MAX_LABEL_SETS: usize = 100;

/// A metric's kind, as ingestion stores it.
pub const COUNTER: &str = "counter";
pub const GAUGE: &str = "gauge";
pub const HISTOGRAM: &str = "histogram";

/// How the values of a bucket become one number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Agg {
    /// The sum of the values: zero when the bucket holds none (a counter that nobody reported
    /// in an hour rose by nothing).
    Sum,
    /// Count-weighted: the sum of the values over their count, across hours and label sets
    /// (never an average of averages).
    Avg,
    Min,
    Max,
    /// The value reported last (by its timestamp) in the bucket.
    Last,
    /// The 95th percentile of a histogram's values, from merged DDSketches (within 1%).
    P95,
}

impl Agg {
    pub fn as_str(self) -> &'static str {
        match self {
            Agg::Sum => "sum",
            Agg::Avg => "avg",
            Agg::Min => "min",
            Agg::Max => "max",
            Agg::Last => "last",
            Agg::P95 => "p95",
        }
    }

    /// The aggregation used when the query names none: what a dashboard shows for the kind
    /// (a counter's increase, a gauge's latest reading, a histogram's mean).
    pub fn default_for(kind: Option<&str>) -> Agg {
        match kind {
            Some(GAUGE) => Agg::Last,
            Some(HISTOGRAM) => Agg::Avg,
            _ => Agg::Sum,
        }
    }

    /// The bucket's value. Every aggregation but `sum` is `None` for a bucket without data:
    /// there is no reading to take a minimum, mean, last value or percentile of, and a 0
    /// would be a made-up reading (a graph draws the gap; Grafana's null).
    pub fn of(self, cell: &Cell) -> Option<f64> {
        if cell.count == 0 {
            return (self == Agg::Sum).then_some(0.0);
        }
        match self {
            Agg::Sum => Some(cell.sum),
            Agg::Avg => Some(cell.sum / cell.count as f64),
            Agg::Min => Some(cell.min),
            Agg::Max => Some(cell.max),
            Agg::Last => cell.last.map(|(_, v)| v),
            Agg::P95 => cell.sketch.as_ref().and_then(|s| s.quantile(0.95)),
        }
    }
}

impl std::str::FromStr for Agg {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "sum" => Agg::Sum,
            "avg" => Agg::Avg,
            "min" => Agg::Min,
            "max" => Agg::Max,
            "last" => Agg::Last,
            "p95" => Agg::P95,
            _ => return Err("must be one of sum, avg, min, max, last, p95".into()),
        })
    }
}

/// The figures of some values of a metric (a rollup row, an hour from raw rows, a bucket, a
/// whole range), merged.
#[derive(Debug, Clone)]
pub struct Cell {
    pub count: i64,
    pub sum: f64,
    pub min: f64,
    pub max: f64,
    /// The last value and when it was reported.
    pub last: Option<(DateTime<Utc>, f64)>,
    /// Histograms only.
    pub sketch: Option<Latency>,
}

impl Default for Cell {
    fn default() -> Self {
        Self {
            count: 0,
            sum: 0.0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            last: None,
            sketch: None,
        }
    }
}

impl Cell {
    pub fn merge(&mut self, other: &Cell) {
        self.count += other.count;
        self.sum += other.sum;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
        // The later report wins; at the same instant the larger value, so the answer does not
        // depend on the order rows were read in (the SQL orders the same way).
        if let Some(theirs) = other.last {
            if self.last.is_none_or(|mine| later(theirs, mine)) {
                self.last = Some(theirs);
            }
        }
        if let Some(theirs) = &other.sketch {
            self.sketch
                .get_or_insert_with(Latency::default)
                .merge(theirs);
        }
    }
}

fn later(a: (DateTime<Utc>, f64), b: (DateTime<Utc>, f64)) -> bool {
    a.0 > b.0 || (a.0 == b.0 && a.1 > b.1)
}

/// A metric name as ingestion accepts them, else why not.
pub fn check_name(name: &str) -> Result<String, String> {
    let name = name.trim();
    if name.is_empty() {
        return Err("is required".into());
    }
    if name.chars().count() > MAX_NAME {
        return Err(format!("must be at most {MAX_NAME} characters"));
    }
    if !is_metric_name(name) {
        return Err("may hold only letters, digits, '_', '.', ':' and '-'".into());
    }
    Ok(name.to_string())
}

/// A label filter, `key:value,key:value`: a series matches when its labels hold every pair
/// (`labels @> filter` in PostgreSQL). A `\` makes the next character plain, so keys and values
/// may hold `,`, `:` and `\` (`host:a\,b`). Empty text is no filter.
pub fn parse_labels(text: &str) -> Result<Option<Map<String, Value>>, String> {
    if text.trim().is_empty() {
        return Ok(None);
    }
    let mut pairs = Vec::new();
    let (mut key, mut value) = (String::new(), None::<String>);
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        let c = match c {
            '\\' => match chars.next() {
                Some(next) => Some(next),
                None => return Err("ends with a lone `\\`".into()),
            },
            ',' => {
                pairs.push((std::mem::take(&mut key), value.take()));
                None
            }
            ':' if value.is_none() => {
                value = Some(String::new());
                None
            }
            c => Some(c),
        };
        if let Some(c) = c {
            match &mut value {
                Some(v) => v.push(c),
                None => key.push(c),
            }
        }
    }
    pairs.push((key, value));
    if pairs.len() > MAX_LABELS {
        return Err(format!("may name at most {MAX_LABELS} labels"));
    }
    let mut out = Map::new();
    for (key, value) in pairs {
        let key = key.trim().to_string();
        let Some(value) = value else {
            return Err("must be `key:value` pairs separated by commas".into());
        };
        if key.is_empty() {
            return Err("a label name must not be empty".into());
        }
        if key.chars().count() > MAX_NAME || value.chars().count() > MAX_NAME {
            return Err(format!(
                "label names and values are at most {MAX_NAME} characters"
            ));
        }
        if key.contains('\0') || value.contains('\0') {
            return Err("must not contain NUL".into());
        }
        if out.insert(key.clone(), Value::String(value)).is_some() {
            return Err(format!("names the label `{key}` twice"));
        }
    }
    Ok(Some(out))
}

/// The buckets of `range` and, for each, the first whole hour whose [`bucket_start`] is that
/// bucket, followed by the first hour after the last bucket: `width_bucket(hour, boundaries)`
/// in PostgreSQL then puts every rollup hour in the bucket `bucket_start` gives it (also in
/// zones whose offset is not whole hours, where a bucket starts mid-hour).
pub fn hour_boundaries(range: &TimeRange, by: GroupBy) -> (Vec<DateTime<Utc>>, Vec<DateTime<Utc>>) {
    let starts = range.buckets(by);
    let first_hour = |start: DateTime<Utc>| {
        let hour = hour_of(start);
        if bucket_start(range.tz, by, hour) < start {
            hour + Duration::hours(1)
        } else {
            hour
        }
    };
    let mut bounds: Vec<DateTime<Utc>> = starts.iter().map(|s| first_hour(*s)).collect();
    if let Some(&last) = starts.last() {
        bounds.push(first_hour(next_start(range.tz, by, last)));
    }
    (starts, bounds)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::range::{RangeInput, Tz};

    fn cell(values: &[(i64, f64)]) -> Cell {
        let mut c = Cell::default();
        for (secs, v) in values {
            let at = DateTime::from_timestamp(*secs, 0).unwrap();
            c.merge(&Cell {
                count: 1,
                sum: *v,
                min: *v,
                max: *v,
                last: Some((at, *v)),
                sketch: None,
            });
        }
        c
    }

    #[test]
    fn aggregations_of_cells() {
        let c = cell(&[(10, 4.0), (30, 1.0), (20, 7.0)]);
        assert_eq!(Agg::Sum.of(&c), Some(12.0));
        assert_eq!(Agg::Avg.of(&c), Some(4.0));
        assert_eq!(Agg::Min.of(&c), Some(1.0));
        assert_eq!(Agg::Max.of(&c), Some(7.0));
        assert_eq!(Agg::Last.of(&c), Some(1.0), "by time, not by order");
        assert_eq!(Agg::P95.of(&c), None, "no sketch: not a histogram");
        let empty = Cell::default();
        assert_eq!(Agg::Sum.of(&empty), Some(0.0));
        for agg in [Agg::Avg, Agg::Min, Agg::Max, Agg::Last, Agg::P95] {
            assert_eq!(agg.of(&empty), None, "{agg:?}");
        }
        // Merging is the same whatever the order, ties on time included.
        let (a, b) = (cell(&[(5, 1.0), (9, 2.0)]), cell(&[(9, 3.0), (1, 8.0)]));
        let (mut ab, mut ba) = (a.clone(), b.clone());
        ab.merge(&b);
        ba.merge(&a);
        let figures = |c: &Cell| (c.count, c.sum, c.min, c.max, c.last);
        assert_eq!(figures(&ab), figures(&ba));
        assert_eq!(Agg::Last.of(&ab), Some(3.0));
    }

    #[test]
    fn p95_merges_sketches() {
        let mut total = Cell::default();
        for half in [1..=50, 51..=100] {
            let mut sketch = Latency::default();
            let mut c = Cell::default();
            for v in half {
                sketch.add(f64::from(v));
                c.count += 1;
            }
            c.sketch = Some(sketch);
            total.merge(&c);
        }
        let p95 = Agg::P95.of(&total).unwrap();
        assert!((p95 - 95.0).abs() <= 0.95 * 1.01, "{p95}");
    }

    #[test]
    fn agg_names_and_defaults() {
        for agg in [Agg::Sum, Agg::Avg, Agg::Min, Agg::Max, Agg::Last, Agg::P95] {
            assert_eq!(agg.as_str().parse::<Agg>(), Ok(agg));
        }
        assert!("median".parse::<Agg>().is_err());
        assert_eq!(Agg::default_for(Some(COUNTER)), Agg::Sum);
        assert_eq!(Agg::default_for(Some(GAUGE)), Agg::Last);
        assert_eq!(Agg::default_for(Some(HISTOGRAM)), Agg::Avg);
        assert_eq!(Agg::default_for(None), Agg::Sum);
    }

    #[test]
    fn label_filters() {
        let parsed = parse_labels("plan:pro, region:eu-west").unwrap().unwrap();
        assert_eq!(
            Value::Object(parsed),
            serde_json::json!({"plan": "pro", "region": "eu-west"})
        );
        let parsed = parse_labels(r"url:https://x/a\,b,empty:,t\:k:v\\")
            .unwrap()
            .unwrap();
        assert_eq!(
            Value::Object(parsed),
            serde_json::json!({"url": "https://x/a,b", "empty": "", "t:k": "v\\"})
        );
        assert_eq!(parse_labels("  "), Ok(None));
        for bad in ["plan", ":pro", "a:1,,b:2", "a:1,a:2", "a:1\\", "k:\0"] {
            assert!(parse_labels(bad).is_err(), "{bad}");
        }
        let many: Vec<String> = (0..=MAX_LABELS).map(|i| format!("k{i}:v")).collect();
        assert!(parse_labels(&many.join(",")).is_err());
    }

    #[test]
    fn names_follow_ingestion() {
        assert_eq!(check_name(" llm.cost_usd "), Ok("llm.cost_usd".into()));
        for bad in ["", "a b", "a/b", &"x".repeat(MAX_NAME + 1)] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn hour_boundaries_put_each_hour_in_its_bucket() {
        let now: DateTime<Utc> = "2026-03-10T12:00:00Z".parse().unwrap();
        for tz in [
            "UTC",
            "Africa/Lagos",
            "America/New_York",
            "Asia/Kolkata",
            "Asia/Kathmandu",
        ] {
            for by in [GroupBy::Hour, GroupBy::Day] {
                let input = RangeInput {
                    from: Some("2026-03-05T07:00:00Z"),
                    to: Some("2026-03-10T12:00:00Z"),
                    tz: Some(tz),
                    group_by: None,
                };
                let range = TimeRange::parse(&input, now, 365).unwrap();
                let (starts, bounds) = hour_boundaries(&range, by);
                assert_eq!(bounds.len(), starts.len() + 1);
                let zone: Tz = tz.parse().unwrap();
                let mut hour = hour_of(range.from);
                while hour < range.to {
                    // width_bucket: the i with bounds[i-1] <= hour < bounds[i].
                    let i = bounds.iter().take_while(|b| **b <= hour).count();
                    if hour >= range.from {
                        assert!(i >= 1 && i <= starts.len(), "{tz} {by} {hour}");
                        assert_eq!(
                            starts[i - 1],
                            bucket_start(zone, by, hour),
                            "{tz} {by} {hour}"
                        );
                    }
                    hour += Duration::hours(1);
                }
            }
        }
    }
}
