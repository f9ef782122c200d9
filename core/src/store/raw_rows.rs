//! Reading raw rows a page at a time: the events explorer and the API request log.
//!
//! Both list a project's rows newest first, filtered, within a time range, and page with a
//! keyset cursor on `(ts, id)` (migration 0008 gave these rows UUIDv7 ids): a page asks for
//! the rows strictly after the last one shown, so rows stored meanwhile never shift a page and
//! no row is shown twice or skipped, however many share a timestamp (keyset pagination, as
//! PostgreSQL's documentation and Sentry's event cursors do it, not `OFFSET`).
//!
//! Rows stored before migration 0008 have no id. Among them, rows of one timestamp are told
//! apart by their physical place (`tableoid`, `ctid`): raw rows are never updated, and
//! deletions (retention, purges) do not move the others, so that place is stable while a
//! client pages. Only a table rewrite (`VACUUM FULL`, `CLUSTER`, pg_repack) moves it; a cursor
//! taken before one may then repeat or skip such id-less rows of the cursor's very timestamp.
//! Rows with ids sort before id-less rows of the same timestamp.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::{DateTime, Utc};
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;
use uuid::Uuid;

use super::{GenericClient, StoreError};

/// Where a row sits in the newest-first order of its table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowPosition {
    pub ts: DateTime<Utc>,
    /// `None` for rows stored before ids were given.
    pub id: Option<Uuid>,
    /// The partition holding the row (`tableoid`) and its place in it (`ctid`): the tie-break
    /// of id-less rows.
    pub table: u32,
    pub block: u32,
    pub offset: u16,
}

/// Which list a [`RowCursor`] belongs to: a cursor of one is refused by the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowList {
    Events,
    Requests,
}

impl RowList {
    fn tag(self) -> &'static str {
        match self {
            RowList::Events => "e1",
            RowList::Requests => "q1",
        }
    }
}

/// The cursor of a raw-row list: the last row shown, and the start of the range the first
/// page resolved, so that a relative range (`24h`) does not slide while a client pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowCursor {
    pub list: RowList,
    pub after: RowPosition,
    pub from: DateTime<Utc>,
}

impl RowCursor {
    /// Opaque to clients.
    pub fn encode(&self) -> String {
        let p = &self.after;
        URL_SAFE_NO_PAD.encode(format!(
            "{}|{}|{}|{}|{}|{}|{}",
            self.list.tag(),
            p.ts.timestamp_micros(),
            p.id.map(|id| id.to_string()).unwrap_or_default(),
            p.table,
            p.block,
            p.offset,
            self.from.timestamp_micros(),
        ))
    }

    /// `None` for anything that is not a cursor this server made for `list`.
    pub fn decode(s: &str, list: RowList) -> Option<Self> {
        let text = String::from_utf8(URL_SAFE_NO_PAD.decode(s).ok()?).ok()?;
        let mut parts = text.split('|');
        if parts.next()? != list.tag() {
            return None;
        }
        let ts = DateTime::from_timestamp_micros(parts.next()?.parse().ok()?)?;
        let id = match parts.next()? {
            "" => None,
            id => Some(id.parse().ok()?),
        };
        let table = parts.next()?.parse().ok()?;
        let block = parts.next()?.parse().ok()?;
        let offset = parts.next()?.parse().ok()?;
        let from = DateTime::from_timestamp_micros(parts.next()?.parse().ok()?)?;
        if parts.next().is_some() {
            return None;
        }
        Some(Self {
            list,
            after: RowPosition {
                ts,
                id,
                table,
                block,
                offset,
            },
            from,
        })
    }
}

/// A statement built clause by clause, with its parameters numbered as they are bound.
struct Query<'a> {
    sql: String,
    params: Vec<&'a (dyn ToSql + Sync)>,
}

impl<'a> Query<'a> {
    fn new(sql: &str) -> Self {
        Self {
            sql: sql.to_string(),
            params: Vec::new(),
        }
    }

    /// Appends `clause` with each `?` replaced by the next bound parameter.
    fn push(&mut self, clause: &str, values: &[&'a (dyn ToSql + Sync)]) {
        let mut values = values.iter();
        for (i, piece) in clause.split('?').enumerate() {
            if i > 0 {
                if let Some(v) = values.next() {
                    self.params.push(*v);
                }
                self.sql.push_str(&format!("${}", self.params.len()));
            }
            self.sql.push_str(piece);
        }
    }

    async fn run(self, client: &impl GenericClient) -> Result<Vec<Row>, StoreError> {
        Ok(client.query(&self.sql, &self.params).await?)
    }
}

/// The columns every raw-row list ends with: the row's position ([`position`] reads them).
const POSITION_COLUMNS: &str = "t.tableoid::oid, (t.ctid::text::point)[0]::int8, \
     (t.ctid::text::point)[1]::int8";

/// Newest first, ids before id-less rows, then their physical place.
const NEWEST_FIRST: &str = " ORDER BY t.ts DESC, \
     coalesce(t.id, '00000000-0000-0000-0000-000000000000'::uuid) DESC, t.tableoid DESC, t.ctid DESC";

/// The condition "after `cursor` in newest-first order". The first conjunct bounds the index
/// scan; the row comparison orders rows of the cursor's own timestamp.
fn push_after<'a>(q: &mut Query<'a>, after: &'a AfterParams) {
    q.push(
        " AND t.ts <= ? AND (t.ts < ? OR \
         (coalesce(t.id, '00000000-0000-0000-0000-000000000000'::uuid), t.tableoid, t.ctid) \
         < (?::uuid, ?::oid, ?::text::tid))",
        &[&after.ts, &after.ts, &after.id, &after.table, &after.ctid],
    );
}

/// A [`RowPosition`] as statement parameters.
struct AfterParams {
    ts: DateTime<Utc>,
    id: Uuid,
    table: u32,
    ctid: String,
}

impl From<RowPosition> for AfterParams {
    fn from(p: RowPosition) -> Self {
        Self {
            ts: p.ts,
            id: p.id.unwrap_or(Uuid::nil()),
            table: p.table,
            ctid: format!("({},{})", p.block, p.offset),
        }
    }
}

/// The position of a row whose last three columns are [`POSITION_COLUMNS`], `ts` and `id`
/// being at `ts_at` and `id_at`.
fn position(row: &Row, ts_at: usize, id_at: usize) -> RowPosition {
    let n = row.len();
    RowPosition {
        ts: row.get(ts_at),
        id: row.get(id_at),
        table: row.get(n - 3),
        block: u32::try_from(row.get::<_, i64>(n - 2)).unwrap_or(u32::MAX),
        offset: u16::try_from(row.get::<_, i64>(n - 1)).unwrap_or(u16::MAX),
    }
}

/// Filters of the events explorer; `None` filters nothing.
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    /// The event name, exactly.
    pub name: Option<String>,
    pub visitor_id: Option<String>,
    /// The person: events sent with this user id, and every event of a visitor identified
    /// as this user (identify applied, as the stats count people).
    pub user_id: Option<String>,
    /// Events whose URL starts with this.
    pub url_prefix: Option<String>,
}

/// One event as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct EventRow {
    pub id: Option<Uuid>,
    pub ts: DateTime<Utc>,
    pub received_at: DateTime<Utc>,
    pub name: String,
    pub visitor_id: String,
    pub user_id: Option<String>,
    pub url: Option<String>,
    pub referrer: Option<String>,
    pub properties: serde_json::Value,
    pub position: RowPosition,
}

/// Up to `limit` events of the project in `[from, to)` matching `filter`, newest first,
/// after `after` if given.
#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "raw_rows.events", otel.kind = "client", db.system.name = "postgresql"))]
pub async fn events(
    client: &impl GenericClient,
    project_id: Uuid,
    (from, to): (DateTime<Utc>, DateTime<Utc>),
    filter: &EventFilter,
    after: Option<RowPosition>,
    limit: usize,
) -> Result<Vec<EventRow>, StoreError> {
    let after = after.map(AfterParams::from);
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let mut q = Query::new(&format!(
        "SELECT t.id, t.ts, t.received_at, t.name, t.visitor_id, t.user_id, t.url, t.referrer, \
         t.properties, {POSITION_COLUMNS} FROM events t WHERE"
    ));
    q.push(
        " t.project_id = ? AND t.ts >= ? AND t.ts < ?",
        &[&project_id, &from, &to],
    );
    if let Some(name) = &filter.name {
        q.push(" AND t.name = ?", &[name]);
    }
    if let Some(visitor) = &filter.visitor_id {
        q.push(" AND t.visitor_id = ?", &[visitor]);
    }
    if let Some(user) = &filter.user_id {
        q.push(
            " AND (t.user_id = ? OR t.visitor_id IN \
             (SELECT i.visitor_id FROM identities i WHERE i.project_id = ? AND i.user_id = ?))",
            &[user, &project_id, user],
        );
    }
    if let Some(prefix) = &filter.url_prefix {
        q.push(" AND starts_with(t.url, ?)", &[prefix]);
    }
    if let Some(after) = &after {
        push_after(&mut q, after);
    }
    q.push(NEWEST_FIRST, &[]);
    q.push(" LIMIT ?", &[&limit]);
    let rows = q.run(client).await?;
    Ok(rows
        .iter()
        .map(|r| EventRow {
            id: r.get(0),
            ts: r.get(1),
            received_at: r.get(2),
            name: r.get(3),
            visitor_id: r.get(4),
            user_id: r.get(5),
            url: r.get(6),
            referrer: r.get(7),
            properties: r.get(8),
            position: position(r, 1, 0),
        })
        .collect())
}

/// A status filter of the request log: one code, or a class (`5` for `5xx`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusFilter {
    Code(u16),
    Class(u8),
}

impl std::str::FromStr for StatusFilter {
    type Err = String;
    /// `404`, or `5xx` (any case) for every code from 500 to 599.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || "must be a status code (100 to 599) or a class like `5xx`".to_string();
        let s = s.trim();
        if let Some(class) = s
            .to_ascii_lowercase()
            .strip_suffix("xx")
            .filter(|c| c.len() == 1)
        {
            return match class.as_bytes()[0] {
                c @ b'1'..=b'5' => Ok(StatusFilter::Class(c - b'0')),
                _ => Err(bad()),
            };
        }
        match s.parse::<u16>() {
            Ok(code) if (100..=599).contains(&code) => Ok(StatusFilter::Code(code)),
            _ => Err(bad()),
        }
    }
}

impl StatusFilter {
    /// The inclusive range of codes it matches.
    pub fn codes(self) -> (i32, i32) {
        match self {
            StatusFilter::Code(c) => (i32::from(c), i32::from(c)),
            StatusFilter::Class(c) => (i32::from(c) * 100, i32::from(c) * 100 + 99),
        }
    }
}

/// Filters of the request log; `None` filters nothing.
#[derive(Debug, Clone, Default)]
pub struct RequestFilter {
    /// The route template, exactly (`/users/{id}`).
    pub route: Option<String>,
    /// Upper case, as stored.
    pub method: Option<String>,
    pub status: Option<StatusFilter>,
    pub min_duration_ms: Option<f64>,
}

/// One API request as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestRow {
    pub id: Option<Uuid>,
    pub ts: DateTime<Utc>,
    pub received_at: DateTime<Utc>,
    pub method: String,
    pub route: String,
    pub status_code: i32,
    pub duration_ms: f64,
    pub user_agent: Option<String>,
    pub ip: Option<String>,
    pub request_size: Option<i64>,
    pub response_size: Option<i64>,
    pub position: RowPosition,
}

/// Up to `limit` API requests of the project in `[from, to)` matching `filter`, newest
/// first, after `after` if given.
#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "raw_rows.requests", otel.kind = "client", db.system.name = "postgresql"))]
pub async fn requests(
    client: &impl GenericClient,
    project_id: Uuid,
    (from, to): (DateTime<Utc>, DateTime<Utc>),
    filter: &RequestFilter,
    after: Option<RowPosition>,
    limit: usize,
) -> Result<Vec<RequestRow>, StoreError> {
    let after = after.map(AfterParams::from);
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let codes = filter.status.map(StatusFilter::codes);
    let mut q = Query::new(&format!(
        "SELECT t.id, t.ts, t.received_at, t.method, t.route, t.status_code, t.duration_ms, \
         t.user_agent, t.ip, t.request_size, t.response_size, {POSITION_COLUMNS} \
         FROM requests t WHERE"
    ));
    q.push(
        " t.project_id = ? AND t.ts >= ? AND t.ts < ?",
        &[&project_id, &from, &to],
    );
    if let Some(route) = &filter.route {
        q.push(" AND t.route = ?", &[route]);
    }
    if let Some(method) = &filter.method {
        q.push(" AND t.method = ?", &[method]);
    }
    if let Some((low, high)) = &codes {
        q.push(" AND t.status_code BETWEEN ? AND ?", &[low, high]);
    }
    if let Some(min) = &filter.min_duration_ms {
        q.push(" AND t.duration_ms >= ?", &[min]);
    }
    if let Some(after) = &after {
        push_after(&mut q, after);
    }
    q.push(NEWEST_FIRST, &[]);
    q.push(" LIMIT ?", &[&limit]);
    let rows = q.run(client).await?;
    Ok(rows
        .iter()
        .map(|r| RequestRow {
            id: r.get(0),
            ts: r.get(1),
            received_at: r.get(2),
            method: r.get(3),
            route: r.get(4),
            status_code: r.get(5),
            duration_ms: r.get(6),
            user_agent: r.get(7),
            ip: r.get(8),
            request_size: r.get(9),
            response_size: r.get(10),
            position: position(r, 1, 0),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_refuse_garbage() {
        let at = DateTime::from_timestamp_micros(1_780_000_000_123_456).unwrap();
        for (id, list) in [
            (Some(Uuid::now_v7()), RowList::Events),
            (None, RowList::Requests),
        ] {
            let c = RowCursor {
                list,
                after: RowPosition {
                    ts: at,
                    id,
                    table: 16_384,
                    block: 7,
                    offset: 12,
                },
                from: at - chrono::Duration::hours(24),
            };
            assert_eq!(RowCursor::decode(&c.encode(), list), Some(c));
            let other = match list {
                RowList::Events => RowList::Requests,
                RowList::Requests => RowList::Events,
            };
            assert_eq!(RowCursor::decode(&c.encode(), other), None);
        }
        for garbage in [
            "",
            "not-a-cursor",
            &URL_SAFE_NO_PAD.encode("e1|1|x|1|1|1|1"),
            &URL_SAFE_NO_PAD.encode("e1|1||1|1|70000|1"),
            &URL_SAFE_NO_PAD.encode("e1|1||1|1|1|1|extra"),
            &URL_SAFE_NO_PAD.encode("e2|1||1|1|1|1"),
            // A project list cursor is not a row cursor.
            &super::super::Cursor {
                created_at: at,
                id: Uuid::nil(),
            }
            .encode(),
        ] {
            assert_eq!(
                RowCursor::decode(garbage, RowList::Events),
                None,
                "{garbage}"
            );
        }
    }

    #[test]
    fn status_filters() {
        assert_eq!("404".parse(), Ok(StatusFilter::Code(404)));
        assert_eq!("5xx".parse(), Ok(StatusFilter::Class(5)));
        assert_eq!("2XX".parse(), Ok(StatusFilter::Class(2)));
        assert_eq!(StatusFilter::Class(4).codes(), (400, 499));
        assert_eq!(StatusFilter::Code(503).codes(), (503, 503));
        for bad in [
            "", "6xx", "0xx", "xx", "55xx", "99", "600", "abc", "-1", "4x",
        ] {
            assert!(bad.parse::<StatusFilter>().is_err(), "{bad}");
        }
    }

    #[test]
    fn clauses_number_their_parameters() {
        let (a, b, c) = (1i32, 2i32, 3i32);
        let mut q = Query::new("SELECT 1 WHERE");
        q.push(" x = ? AND y = ?", &[&a, &b]);
        q.push(" ORDER BY z", &[]);
        q.push(" LIMIT ?", &[&c]);
        assert_eq!(
            q.sql,
            "SELECT 1 WHERE x = $1 AND y = $2 ORDER BY z LIMIT $3"
        );
        assert_eq!(q.params.len(), 3);
    }
}
