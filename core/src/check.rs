//! One uptime check: an HTTP request through awc, judged by the monitor's rules, with the SSRF
//! guard in front of it.
//!
//! **The guard** ([`forbidden`]): unless `monitors.allow_private_targets` is set, a check may
//! not reach loopback, private (RFC 1918, `fc00::/7`), link-local (`169.254/16`, `fe80::/10`,
//! cloud metadata `169.254.169.254` and `fd00:ec2::254` among them), shared/CGNAT
//! (`100.64/10`), unspecified, "this network" (`0/8`), reserved (`240/4`), multicast or
//! broadcast addresses, benchmarking (`198.18/15`), nor IPv6 addresses that embed one of those
//! (IPv4-mapped `::ffff:a.b.c.d`, IPv4-compatible, NAT64 `64:ff9b::/96`, 6to4 `2002::/16`), nor
//! IPv6 forms whose IPv4 address cannot be told (local-use NAT64 `64:ff9b:1::/48`, Teredo
//! `2001::/32`).
//!
//! The host is resolved here, at every check ([`tokio::net::lookup_host`]), *every* address it
//! resolves to is checked (a name with one public and one private record is refused), and the
//! request is then sent to the checked address itself ([`awc::ClientRequest::address`]): awc
//! does not resolve the name again, so a DNS answer that changes between the check and the
//! connection (rebinding) cannot slip a private address in. The URL's host still goes into the
//! `Host` header and the TLS SNI, so virtual hosts and certificates work as usual. Redirects are
//! not followed (a redirect to `127.0.0.1` would bypass the guard): a 3xx is judged by the
//! expected status codes like any other answer.
//!
//! **Failures** are classified as [`FailureKind`]: `dns` (no such name, or no address),
//! `connect` (refused, reset, unreachable, or the address is not allowed), `tls` (handshake or
//! certificate), `timeout` (the whole check, DNS to body, ran past the monitor's timeout),
//! `status` (an unexpected code) and `keyword` (missing, or present with `keyword_absent`).
//! At most `monitors.max_body_bytes` of the body are read, and only when there is a keyword.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;
use std::time::{Duration, Instant};

use awc::http::{Method, Uri};
use futures_util::StreamExt;
use tracing::Instrument;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::monitor::{status_expected, FailureKind, MonitorConfig, MonitorState, Status};

/// Longest error text kept with a check.
const MAX_ERROR_CHARS: usize = 300;

/// Why an address may not be checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forbidden {
    Loopback,
    Private,
    LinkLocal,
    CloudMetadata,
    SharedAddressSpace,
    Unspecified,
    Reserved,
    Multicast,
    Broadcast,
    /// An IPv6 form that tunnels or translates to IPv4 whose address cannot be told apart
    /// (Teredo, local-use NAT64).
    Tunnel,
}

impl Forbidden {
    pub fn as_str(self) -> &'static str {
        match self {
            Forbidden::Loopback => "loopback",
            Forbidden::Private => "private network",
            Forbidden::LinkLocal => "link-local",
            Forbidden::CloudMetadata => "cloud metadata",
            Forbidden::SharedAddressSpace => "shared address space (CGNAT)",
            Forbidden::Unspecified => "unspecified",
            Forbidden::Reserved => "reserved",
            Forbidden::Multicast => "multicast",
            Forbidden::Broadcast => "broadcast",
            Forbidden::Tunnel => "IPv4 tunnel or translation (Teredo, local-use NAT64)",
        }
    }
}

impl fmt::Display for Forbidden {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a check may not reach `ip`, or `None` when it is a public address.
pub fn forbidden(ip: IpAddr) -> Option<Forbidden> {
    match ip {
        IpAddr::V4(v4) => forbidden_v4(v4),
        IpAddr::V6(v6) => forbidden_v6(v6),
    }
}

fn forbidden_v4(ip: Ipv4Addr) -> Option<Forbidden> {
    let [a, b, c, d] = ip.octets();
    if ip == Ipv4Addr::new(169, 254, 169, 254) {
        return Some(Forbidden::CloudMetadata);
    }
    if ip.is_broadcast() {
        return Some(Forbidden::Broadcast);
    }
    if ip.is_unspecified() || a == 0 {
        return Some(Forbidden::Unspecified);
    }
    if a == 127 {
        return Some(Forbidden::Loopback);
    }
    if a == 10 || (a == 172 && (16..=31).contains(&b)) || (a == 192 && b == 168) {
        return Some(Forbidden::Private);
    }
    if a == 169 && b == 254 {
        return Some(Forbidden::LinkLocal);
    }
    if a == 100 && (64..=127).contains(&b) {
        return Some(Forbidden::SharedAddressSpace);
    }
    if (224..=239).contains(&a) {
        return Some(Forbidden::Multicast);
    }
    // 240/4 (reserved), 192.0.0/24 (IETF protocol assignments, e.g. DS-Lite), and
    // 198.18/15 (benchmarking, RFC 2544: lab networks, never a public service).
    if a >= 240 || (a == 192 && b == 0 && c == 0) || (a == 198 && (b == 18 || b == 19)) {
        return Some(Forbidden::Reserved);
    }
    let _ = d;
    None
}

fn forbidden_v6(ip: Ipv6Addr) -> Option<Forbidden> {
    let s = ip.segments();
    if ip == Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x0254) {
        return Some(Forbidden::CloudMetadata);
    }
    if ip.is_unspecified() {
        return Some(Forbidden::Unspecified);
    }
    if ip.is_loopback() {
        return Some(Forbidden::Loopback);
    }
    // IPv4-mapped (::ffff:a.b.c.d) and IPv4-compatible (::a.b.c.d): judged as the IPv4 address.
    if s[..5] == [0, 0, 0, 0, 0] && (s[5] == 0xffff || s[5] == 0) {
        let v4 = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
        return forbidden_v4(v4);
    }
    // NAT64 (64:ff9b::/96) embeds an IPv4 address in its last 32 bits.
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        let v4 = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
        return forbidden_v4(v4);
    }
    // Local-use NAT64 (64:ff9b:1::/48, RFC 8215) may place the IPv4 address at any of several
    // offsets, and Teredo (2001::/32, RFC 4380) carries an obfuscated one: neither can be
    // checked, so both are refused whole.
    if s[..3] == [0x64, 0xff9b, 0x0001] || s[..2] == [0x2001, 0] {
        return Some(Forbidden::Tunnel);
    }
    // 6to4 (2002::/16) embeds one in bits 16..48.
    if s[0] == 0x2002 {
        let v4 = Ipv4Addr::new((s[1] >> 8) as u8, s[1] as u8, (s[2] >> 8) as u8, s[2] as u8);
        if let Some(f) = forbidden_v4(v4) {
            return Some(f);
        }
    }
    if s[0] & 0xfe00 == 0xfc00 {
        return Some(Forbidden::Private);
    }
    // fe80::/10 link-local; fec0::/10 (deprecated site-local) is private in practice.
    if s[0] & 0xffc0 == 0xfe80 {
        return Some(Forbidden::LinkLocal);
    }
    if s[0] & 0xffc0 == 0xfec0 {
        return Some(Forbidden::Private);
    }
    if s[0] & 0xff00 == 0xff00 {
        return Some(Forbidden::Multicast);
    }
    None
}

/// What one check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub ok: bool,
    pub status_code: Option<u16>,
    /// From the start of the request (DNS included) to the verdict.
    pub response_ms: u32,
    pub failure: Option<FailureKind>,
    pub error: Option<String>,
}

impl Outcome {
    fn success(status: u16, started: Instant) -> Self {
        Self {
            ok: true,
            status_code: Some(status),
            response_ms: elapsed_ms(started),
            failure: None,
            error: None,
        }
    }

    fn failed(
        kind: FailureKind,
        status: Option<u16>,
        error: impl Into<String>,
        started: Instant,
    ) -> Self {
        Self {
            ok: false,
            status_code: status,
            response_ms: elapsed_ms(started),
            failure: Some(kind),
            error: Some(short(&error.into())),
        }
    }

    /// The metric label of the outcome: `ok` or the failure kind.
    pub fn result_label(&self) -> &'static str {
        self.failure.map(FailureKind::as_str).unwrap_or("ok")
    }
}

fn elapsed_ms(started: Instant) -> u32 {
    u32::try_from(started.elapsed().as_millis()).unwrap_or(u32::MAX)
}

fn short(s: &str) -> String {
    let mut out: String = s
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_ERROR_CHARS)
        .collect();
    if s.chars().filter(|c| !c.is_control()).count() > MAX_ERROR_CHARS {
        out.push('…');
    }
    out
}

/// What a check needs besides the monitor.
#[derive(Debug, Clone)]
pub struct CheckOptions {
    pub allow_private_targets: bool,
    pub max_body_bytes: usize,
    pub user_agent: String,
    /// The whole check's time budget (the monitor's timeout).
    pub timeout: Duration,
}

/// The HTTP client type checks use (re-exported for crates that do not depend on awc).
pub use awc::Client as HttpClient;

/// A random delay in `[0, max)`: spreads first checks so monitors do not fire together.
pub fn jitter(max: Duration) -> Duration {
    let nanos = u64::try_from(max.as_nanos()).unwrap_or(u64::MAX);
    if nanos == 0 {
        return Duration::ZERO;
    }
    Duration::from_nanos(rand::random_range(0..nanos))
}

/// The HTTP client checks go through (`!Send`: one per arbiter thread). No redirects, no
/// client-wide timeout (each check has its own), connections closed after each check.
/// `max_connections` is the instance's check slots ([`crate::check_slots`]): a check holds a
/// slot before its timeout starts, so the client never makes it wait for a connection inside
/// its timeout.
pub fn http_client(max_connections: usize) -> awc::Client {
    let connector = awc::Connector::new()
        // Each check bounds itself as a whole; these only must not cut it shorter.
        .timeout(Duration::from_secs(900))
        .handshake_timeout(Duration::from_secs(900))
        // Twice the slots: headroom for connections of finished checks still closing.
        .limit(max_connections.max(1).saturating_mul(2))
        .conn_keep_alive(Duration::from_secs(1));
    awc::Client::builder()
        .connector(connector)
        .disable_redirects()
        .disable_timeout()
        .finish()
}

/// The target of a URL: scheme, host (without IPv6 brackets) and port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub https: bool,
    pub host: String,
    pub port: u16,
}

/// Parses an http(s) URL into its target.
pub fn target(url: &str) -> Result<(Uri, Target), String> {
    let uri = Uri::from_str(url).map_err(|e| format!("invalid URL: {e}"))?;
    let https = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        _ => return Err("the URL must start with http:// or https://".to_string()),
    };
    let host = uri
        .host()
        .ok_or_else(|| "the URL has no host".to_string())?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
        .to_string();
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    Ok((uri, Target { https, host, port }))
}

/// Resolves `target` and applies the guard to every address. Returns the address to connect
/// to, or the failure to record.
pub async fn resolve_checked(
    target: &Target,
    allow_private: bool,
) -> Result<SocketAddr, (FailureKind, String)> {
    let addrs: Vec<SocketAddr> = match target.host.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, target.port)],
        Err(_) => match tokio::net::lookup_host((target.host.as_str(), target.port)).await {
            Ok(found) => found.collect(),
            Err(e) => {
                return Err((
                    FailureKind::Dns,
                    format!("cannot resolve {}: {e}", target.host),
                ))
            }
        },
    };
    let Some(first) = addrs.first().copied() else {
        return Err((
            FailureKind::Dns,
            format!("{} has no addresses", target.host),
        ));
    };
    if !allow_private {
        for addr in &addrs {
            if let Some(why) = forbidden(addr.ip()) {
                // The address itself stays out of the text a tenant reads: naming what a host
                // resolved to would let tenants map the internal DNS of observe's network
                // (OWASP SSRF Prevention Cheat Sheet: no internal details in the answer).
                return Err((
                    FailureKind::Connect,
                    format!("target address is not allowed ({why})"),
                ));
            }
        }
    }
    Ok(first)
}

/// Runs one check of `monitor` (no retry; the caller retries).
pub async fn run(client: &awc::Client, monitor: &MonitorConfig, options: &CheckOptions) -> Outcome {
    let started = Instant::now();
    // A client span for traces (not built when they are off): the method and host, never the
    // path or query, which may hold a token.
    let span = tracing::debug_span!(
        "http.client",
        otel.name = monitor.method.as_str(),
        otel.kind = "client",
        http.request.method = monitor.method.as_str(),
        server.address = target(&monitor.url).map(|(_, t)| t.host).unwrap_or_default(),
        monitor_id = %monitor.id,
        http.response.status_code = tracing::field::Empty,
        error = tracing::field::Empty,
    );
    let attempt = attempt(client, monitor, options, started, &span);
    let outcome = match tokio::time::timeout(options.timeout, attempt)
        .instrument(span.clone())
        .await
    {
        Ok(outcome) => outcome,
        Err(_) => Outcome::failed(
            FailureKind::Timeout,
            None,
            format!("no answer within {} ms", options.timeout.as_millis()),
            started,
        ),
    };
    if let Some(code) = outcome.status_code {
        span.record("http.response.status_code", code);
    }
    if !outcome.ok {
        span.record("error", outcome.error.as_deref().unwrap_or("failed"));
    }
    outcome
}

async fn attempt(
    client: &awc::Client,
    monitor: &MonitorConfig,
    options: &CheckOptions,
    started: Instant,
    span: &tracing::Span,
) -> Outcome {
    let (uri, target) = match target(&monitor.url) {
        Ok(t) => t,
        Err(e) => return Outcome::failed(FailureKind::Connect, None, e, started),
    };
    let addr = match resolve_checked(&target, options.allow_private_targets).await {
        Ok(addr) => addr,
        Err((kind, e)) => return Outcome::failed(kind, None, e, started),
    };
    let method = Method::from_bytes(monitor.method.as_bytes()).unwrap_or(Method::GET);
    let mut req = client
        .request(method, uri)
        .address(addr)
        .force_close()
        .insert_header((awc::http::header::USER_AGENT, options.user_agent.as_str()));
    for (name, value) in &monitor.headers {
        req = req.insert_header((name.as_str(), value.as_str()));
    }
    if monitor.send_traceparent {
        req = crate::trace::inject(req, span);
    }
    let mut res = match req.send().await {
        Ok(res) => res,
        Err(e) => {
            let (kind, text) = classify(e, target.https);
            return Outcome::failed(kind, None, text, started);
        }
    };
    let code = res.status().as_u16();
    if !status_expected(&monitor.expected_status, code) {
        return Outcome::failed(
            FailureKind::Status,
            Some(code),
            format!("unexpected status {code}"),
            started,
        );
    }
    let Some(keyword) = monitor.keyword.as_deref().filter(|k| !k.is_empty()) else {
        return Outcome::success(code, started);
    };
    let mut body: Vec<u8> = Vec::new();
    while body.len() < options.max_body_bytes {
        match res.next().await {
            Some(Ok(chunk)) => {
                let room = options.max_body_bytes - body.len();
                body.extend_from_slice(&chunk[..chunk.len().min(room)]);
            }
            Some(Err(e)) => {
                return Outcome::failed(
                    FailureKind::Connect,
                    Some(code),
                    format!("reading the body: {e}"),
                    started,
                )
            }
            None => break,
        }
    }
    let found = contains(&body, keyword.as_bytes());
    if found == monitor.keyword_absent {
        let text = if monitor.keyword_absent {
            "the keyword is present in the body"
        } else {
            "the keyword is missing from the body"
        };
        return Outcome::failed(FailureKind::Keyword, Some(code), text, started);
    }
    Outcome::success(code, started)
}

/// Whether `needle` occurs in `haystack`.
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

/// The failure kind and text of a request that got no answer.
fn classify(e: awc::error::SendRequestError, https: bool) -> (FailureKind, String) {
    use awc::error::{ConnectError as C, SendRequestError as E};
    match e {
        E::Timeout => (FailureKind::Timeout, "no answer within the timeout".into()),
        E::Connect(C::Timeout) => (FailureKind::Timeout, "connecting timed out".into()),
        E::Connect(C::Resolver(e)) => (FailureKind::Dns, format!("cannot resolve: {e}")),
        E::Connect(C::NoRecords | C::Unresolved) => {
            (FailureKind::Dns, "no address for the host".into())
        }
        E::Connect(C::SslIsNotSupported) => (FailureKind::Tls, "TLS is not supported".into()),
        E::Connect(C::Io(io)) => {
            if io.kind() == std::io::ErrorKind::TimedOut {
                return (FailureKind::Timeout, format!("connecting: {io}"));
            }
            let tls = io
                .get_ref()
                .is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some())
                || (https && io.kind() == std::io::ErrorKind::InvalidData);
            if tls {
                (FailureKind::Tls, format!("TLS: {io}"))
            } else {
                (FailureKind::Connect, format!("connecting: {io}"))
            }
        }
        E::Connect(other) => (FailureKind::Connect, format!("connecting: {other}")),
        other => (FailureKind::Connect, other.to_string()),
    }
}

/// What a check's result does to the monitor's incident.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// Only the state changes.
    Save,
    /// The streak reached `failures_to_open` and no incident is open: open one.
    Open,
    /// A success with an incident open: close it.
    Close(Uuid),
}

/// The monitor's next state after a check that started at `started_at`, and what it does to
/// the incident. A success resets the streak and closes the open incident; a failure grows the
/// streak, and at `failures_to_open` (or beyond, when an earlier open could not be written)
/// opens one unless one is open. The incident id itself is set once the open is written.
pub fn transition(
    state: &MonitorState,
    ok: bool,
    started_at: DateTime<Utc>,
    next_due: Option<DateTime<Utc>>,
    failures_to_open: u32,
) -> (MonitorState, Transition) {
    let mut next = state.clone();
    next.last_checked_at = Some(started_at);
    next.next_check_at = next_due;
    if ok {
        next.failure_streak = 0;
        next.status = Status::Up;
        let t = match state.open_incident {
            Some(incident) => Transition::Close(incident),
            None => Transition::Save,
        };
        return (next, t);
    }
    next.failure_streak = next.failure_streak.saturating_add(1);
    if next.failure_streak < failures_to_open.max(1) {
        return (next, Transition::Save);
    }
    next.status = Status::Down;
    let t = if state.open_incident.is_none() {
        Transition::Open
    } else {
        Transition::Save
    };
    (next, t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn known_addresses_are_classified() {
        let cases = [
            ("127.0.0.1", Some(Forbidden::Loopback)),
            ("127.255.0.9", Some(Forbidden::Loopback)),
            ("10.1.2.3", Some(Forbidden::Private)),
            ("172.16.0.1", Some(Forbidden::Private)),
            ("172.31.255.255", Some(Forbidden::Private)),
            ("172.32.0.1", None),
            ("192.168.1.1", Some(Forbidden::Private)),
            ("169.254.1.1", Some(Forbidden::LinkLocal)),
            ("169.254.169.254", Some(Forbidden::CloudMetadata)),
            ("100.64.0.1", Some(Forbidden::SharedAddressSpace)),
            ("100.127.255.255", Some(Forbidden::SharedAddressSpace)),
            ("100.128.0.1", None),
            ("0.0.0.0", Some(Forbidden::Unspecified)),
            ("0.1.2.3", Some(Forbidden::Unspecified)),
            ("224.0.0.1", Some(Forbidden::Multicast)),
            ("255.255.255.255", Some(Forbidden::Broadcast)),
            ("240.0.0.1", Some(Forbidden::Reserved)),
            ("8.8.8.8", None),
            ("93.184.216.34", None),
            ("::1", Some(Forbidden::Loopback)),
            ("::", Some(Forbidden::Unspecified)),
            ("fc00::1", Some(Forbidden::Private)),
            ("fd12:3456::1", Some(Forbidden::Private)),
            ("fd00:ec2::254", Some(Forbidden::CloudMetadata)),
            ("fe80::1", Some(Forbidden::LinkLocal)),
            ("ff02::1", Some(Forbidden::Multicast)),
            ("::ffff:127.0.0.1", Some(Forbidden::Loopback)),
            ("::ffff:10.0.0.1", Some(Forbidden::Private)),
            ("::ffff:169.254.169.254", Some(Forbidden::CloudMetadata)),
            ("::ffff:8.8.8.8", None),
            ("64:ff9b::7f00:1", Some(Forbidden::Loopback)),
            ("2002:7f00:1::1", Some(Forbidden::Loopback)),
            ("2001:4860:4860::8888", None),
            ("2606:4700::1111", None),
            // Local-use NAT64 (RFC 8215): the IPv4 address may sit anywhere in it.
            ("64:ff9b:1::7f00:1", Some(Forbidden::Tunnel)),
            (
                "64:ff9b:1:ffff:ffff:ffff:ffff:ffff",
                Some(Forbidden::Tunnel),
            ),
            ("64:ff9b:2::1", None),
            // Teredo (RFC 4380) carries an obfuscated IPv4 address.
            ("2001::1", Some(Forbidden::Tunnel)),
            (
                "2001:0:4136:e378:8000:63bf:3fff:fdd2",
                Some(Forbidden::Tunnel),
            ),
            ("2001:1::1", None),
            // Benchmarking (RFC 2544): never a public service.
            ("198.18.0.1", Some(Forbidden::Reserved)),
            ("198.19.255.255", Some(Forbidden::Reserved)),
            ("198.17.255.255", None),
            ("198.20.0.0", None),
        ];
        for (addr, want) in cases {
            assert_eq!(forbidden(ip(addr)), want, "{addr}");
        }
    }

    #[test]
    fn urls_name_their_target() {
        let (_, t) = target("https://example.com/health").unwrap();
        assert_eq!(
            t,
            Target {
                https: true,
                host: "example.com".into(),
                port: 443
            }
        );
        let (_, t) = target("http://[::1]:8080/").unwrap();
        assert_eq!(t.host, "::1");
        assert_eq!(t.port, 8080);
        assert!(target("ftp://example.com").is_err());
        assert!(target("not a url").is_err());
    }

    #[tokio::test]
    async fn the_guard_refuses_loopback_by_literal_and_by_name() {
        let (_, literal) = target("http://127.0.0.1:9/").unwrap();
        let err = resolve_checked(&literal, false).await.unwrap_err();
        assert_eq!(err.0, FailureKind::Connect);
        assert!(err.1.contains("not allowed"), "{}", err.1);
        let (_, named) = target("http://localhost:9/").unwrap();
        let err = resolve_checked(&named, false).await.unwrap_err();
        assert!(err.1.contains("not allowed"), "{}", err.1);
        assert!(resolve_checked(&literal, true).await.is_ok());
    }

    #[test]
    fn keyword_search() {
        assert!(contains(b"hello world", b"world"));
        assert!(!contains(b"hello", b"world"));
        assert!(contains(b"", b""));
    }

    fn pending() -> MonitorState {
        MonitorState {
            status: Status::Pending,
            failure_streak: 0,
            last_checked_at: None,
            next_check_at: None,
            open_incident: None,
        }
    }

    /// Runs `results` through [`transition`], every open and close written at once; returns
    /// the opens and closes it made.
    fn replay(results: &[bool], failures_to_open: u32) -> (usize, usize, MonitorState) {
        let (mut state, mut opens, mut closes) = (pending(), 0, 0);
        for ok in results {
            let (mut next, t) = transition(&state, *ok, Utc::now(), None, failures_to_open);
            match t {
                Transition::Open => {
                    opens += 1;
                    next.open_incident = Some(Uuid::new_v4());
                }
                Transition::Close(_) => {
                    closes += 1;
                    next.open_incident = None;
                }
                Transition::Save => {}
            }
            state = next;
        }
        (opens, closes, state)
    }

    #[test]
    fn two_failures_open_nothing_three_open_one_and_a_success_closes_it() {
        assert_eq!(replay(&[true, false, false, true], 3).0, 0);
        let (opens, closes, state) = replay(&[false, false, false, false, false], 3);
        assert_eq!((opens, closes), (1, 0));
        assert_eq!(state.status, Status::Down);
        assert_eq!(state.failure_streak, 5);
        let (opens, closes, state) = replay(&[false, false, false, true, true], 3);
        assert_eq!((opens, closes), (1, 1));
        assert_eq!(state.status, Status::Up);
        assert_eq!(state.failure_streak, 0);
        assert_eq!(state.open_incident, None);
    }

    #[test]
    fn an_open_that_was_not_written_is_tried_again_by_the_next_failure() {
        let mut state = pending();
        state.failure_streak = 3;
        state.status = Status::Down;
        let (next, t) = transition(&state, false, Utc::now(), None, 3);
        assert_eq!(t, Transition::Open);
        assert_eq!(next.failure_streak, 4);
    }

    proptest! {
        #[test]
        fn incidents_match_runs_of_failures(results in proptest::collection::vec(any::<bool>(), 0..60), n in 1u32..5) {
            let (opens, closes, state) = replay(&results, n);
            let mut runs = 0;
            let mut run = 0;
            let mut closed_runs = 0;
            for ok in &results {
                if *ok {
                    if run >= n { closed_runs += 1; }
                    run = 0;
                } else {
                    run += 1;
                    if run == n { runs += 1; }
                }
            }
            prop_assert_eq!(opens, runs);
            prop_assert_eq!(closes, closed_runs);
            prop_assert_eq!(state.open_incident.is_some(), run >= n);
            prop_assert_eq!(state.failure_streak, run);
        }

        #[test]
        fn mapped_v4_is_judged_like_v4(a: u8, b: u8, c: u8, d: u8) {
            let v4 = Ipv4Addr::new(a, b, c, d);
            prop_assert_eq!(forbidden(IpAddr::V6(v4.to_ipv6_mapped())), forbidden(IpAddr::V4(v4)));
        }

        #[test]
        fn std_classes_are_always_forbidden(a: u8, b: u8, c: u8, d: u8) {
            let v4 = Ipv4Addr::new(a, b, c, d);
            if v4.is_loopback() || v4.is_private() || v4.is_link_local() || v4.is_multicast()
                || v4.is_broadcast() || v4.is_unspecified()
            {
                prop_assert!(forbidden(IpAddr::V4(v4)).is_some());
            }
        }

        #[test]
        fn ten_slash_eight_is_private(b: u8, c: u8, d: u8) {
            prop_assert_eq!(forbidden(ip(&format!("10.{b}.{c}.{d}"))), Some(Forbidden::Private));
        }

        #[test]
        fn ula_and_link_local_v6_are_forbidden(seg0 in 0xfc00u16..=0xfdff, rest: [u16; 7]) {
            let v6 = Ipv6Addr::new(seg0, rest[0], rest[1], rest[2], rest[3], rest[4], rest[5], rest[6]);
            prop_assert!(forbidden(IpAddr::V6(v6)).is_some());
            let ll = Ipv6Addr::new(0xfe80 | (seg0 & 0x3f), rest[0], rest[1], rest[2], rest[3], rest[4], rest[5], rest[6]);
            prop_assert_eq!(forbidden(IpAddr::V6(ll)), Some(Forbidden::LinkLocal));
        }

        #[test]
        fn global_unicast_v6_outside_special_ranges_is_allowed(seg0 in 0x2400u16..=0x2fff, rest: [u16; 7]) {
            prop_assume!(seg0 != 0x2002);
            let v6 = Ipv6Addr::new(seg0, rest[0], rest[1], rest[2], rest[3], rest[4], rest[5], rest[6]);
            prop_assert_eq!(forbidden(IpAddr::V6(v6)), None);
        }
    }
}
