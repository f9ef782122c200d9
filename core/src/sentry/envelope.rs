//! Sentry envelopes: the body SDKs post to `/api/{project}/envelope/`, split into its items.
//!
//! The format (Sentry's "Envelopes" spec, develop.sentry.dev/sdk/data-model/envelopes/): a
//! header line holding a JSON object, then items, each an item header line (a JSON object with
//! `type` and an optional `length`) and a payload. With `length`, the payload is exactly that
//! many bytes, then a `\n` or the end of the body; without it, the payload runs to the next `\n`
//! or the end. Payloads are borrowed from the body, never copied, and nothing is read into
//! memory beyond what [`Limits`] allows: a line longer than its limit is refused before it is
//! parsed, and the item list stops growing at `max_items`.
//!
//! Leniency, where SDKs and hand-written envelopes differ from the letter of the spec: empty
//! or whitespace-only lines between items and at the end are skipped, and a `\r\n` after a
//! length-delimited payload counts as its newline. A `\r` ending a payload without `length` is
//! part of that payload, as the spec says.

/// Bounds on one envelope; a body over any of them is refused as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_items: usize,
    /// Longest header line, the envelope's or an item's.
    pub max_header_bytes: usize,
    /// Largest payload of one item.
    pub max_item_bytes: usize,
}

impl Default for Limits {
    /// Sentry's own bound is 1 MB for an event or transaction item (the spec's "Size Limits");
    /// 100 items is far more than any SDK puts in one envelope.
    fn default() -> Self {
        Self {
            max_items: 100,
            max_header_bytes: 64 * 1024,
            max_item_bytes: 1024 * 1024,
        }
    }
}

/// The envelope header. Unknown fields (`sdk`, `trace`, …) are ignored; `{}` is valid.
#[derive(Debug, Default, Clone, PartialEq, serde::Deserialize)]
pub struct EnvelopeHeader {
    pub event_id: Option<String>,
    pub dsn: Option<String>,
    pub sent_at: Option<String>,
}

/// What an item holds. Types observe does not read are [`ItemType::Other`], skipped and
/// counted, as the spec asks of unknown types.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ItemType {
    Event,
    Transaction,
    Session,
    Sessions,
    ClientReport,
    Attachment,
    UserReport,
    Other,
}

impl ItemType {
    fn from_header(name: &str) -> Self {
        match name {
            "event" => ItemType::Event,
            "transaction" => ItemType::Transaction,
            "session" => ItemType::Session,
            "sessions" => ItemType::Sessions,
            "client_report" => ItemType::ClientReport,
            "attachment" => ItemType::Attachment,
            "user_report" => ItemType::UserReport,
            _ => ItemType::Other,
        }
    }

    /// The type's name; a bounded set, so it can label a metric (SDKs invent new types often).
    pub fn as_str(&self) -> &'static str {
        match self {
            ItemType::Event => "event",
            ItemType::Transaction => "transaction",
            ItemType::Session => "session",
            ItemType::Sessions => "sessions",
            ItemType::ClientReport => "client_report",
            ItemType::Attachment => "attachment",
            ItemType::UserReport => "user_report",
            ItemType::Other => "other",
        }
    }
}

/// One item: its type and its payload, borrowed from the body.
#[derive(Debug, Clone, PartialEq)]
pub struct Item<'a> {
    pub item_type: ItemType,
    pub payload: &'a [u8],
}

#[derive(Debug, Clone, PartialEq)]
pub struct Envelope<'a> {
    pub header: EnvelopeHeader,
    pub items: Vec<Item<'a>>,
}

/// Why a body is not an envelope. The messages are meant for the SDK's developer: items are
/// counted from 1, in the order they appear.
#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    #[error("the body is empty: an envelope starts with a header line (`{{}}` at least)")]
    MissingHeader,
    #[error("the envelope header is longer than {limit} bytes")]
    HeaderTooLong { limit: usize },
    #[error("the envelope header is not a JSON object")]
    HeaderNotObject,
    #[error("the envelope header is not JSON: {0}")]
    HeaderSyntax(#[source] serde_json::Error),
    #[error("the envelope header is not valid: {0}")]
    HeaderInvalid(#[source] serde_json::Error),
    #[error("more than {limit} items")]
    TooManyItems { limit: usize },
    #[error("item {item}: its header is longer than {limit} bytes")]
    ItemHeaderTooLong { item: usize, limit: usize },
    #[error("item {item}: its header is not a JSON object")]
    ItemHeaderNotObject { item: usize },
    #[error("item {item}: its header is not JSON: {source}")]
    ItemHeaderSyntax {
        item: usize,
        #[source]
        source: serde_json::Error,
    },
    #[error("item {item}: its header is not valid: {source}")]
    ItemHeaderInvalid {
        item: usize,
        #[source]
        source: serde_json::Error,
    },
    #[error("item {item}: its header has no `type`")]
    MissingType { item: usize },
    #[error("item {item} is larger than {limit} bytes")]
    ItemTooLarge { item: usize, limit: usize },
    #[error("item {item}: `length` {length} runs past the end of the body")]
    LengthPastEnd { item: usize, length: u64 },
    #[error(
        "item {item}: its payload of `length` {length} is followed by neither a newline nor the \
         end of the body (is `length` right?)"
    )]
    NoNewlineAfterPayload { item: usize, length: u64 },
}

/// An item header as far as the parser needs it; other fields (`content_type`, `filename`, …)
/// are ignored.
#[derive(serde::Deserialize)]
struct ItemHeader {
    #[serde(rename = "type")]
    item_type: Option<String>,
    length: Option<u64>,
}

/// Splits `body` into its header and items, within `limits`.
pub fn parse<'a>(body: &'a [u8], limits: &Limits) -> Result<Envelope<'a>, EnvelopeError> {
    let (line, mut rest) =
        split_line(body, limits.max_header_bytes).ok_or(EnvelopeError::HeaderTooLong {
            limit: limits.max_header_bytes,
        })?;
    let line = line.trim_ascii();
    if line.is_empty() {
        return Err(EnvelopeError::MissingHeader);
    }
    // A derived struct would also take a JSON array; the spec says object.
    if !line.starts_with(b"{") {
        return Err(EnvelopeError::HeaderNotObject);
    }
    let header: EnvelopeHeader = serde_json::from_slice(line).map_err(|e| {
        if e.is_data() {
            EnvelopeError::HeaderInvalid(e)
        } else {
            EnvelopeError::HeaderSyntax(e)
        }
    })?;

    let mut items = Vec::new();
    loop {
        rest = skip_blank_lines(rest);
        if rest.is_empty() {
            break;
        }
        if items.len() == limits.max_items {
            return Err(EnvelopeError::TooManyItems {
                limit: limits.max_items,
            });
        }
        let n = items.len() + 1;
        let (line, after_header) =
            split_line(rest, limits.max_header_bytes).ok_or(EnvelopeError::ItemHeaderTooLong {
                item: n,
                limit: limits.max_header_bytes,
            })?;
        let header = item_header(line, n)?;
        let item_type = ItemType::from_header(&header.0);
        let (payload, after) = match header.1 {
            Some(length) => length_delimited(after_header, length, n, limits)?,
            None => split_line(after_header, limits.max_item_bytes).ok_or(
                EnvelopeError::ItemTooLarge {
                    item: n,
                    limit: limits.max_item_bytes,
                },
            )?,
        };
        items.push(Item { item_type, payload });
        rest = after;
    }
    Ok(Envelope { header, items })
}

/// The item header on `line`: its type and `length`.
fn item_header(line: &[u8], item: usize) -> Result<(String, Option<u64>), EnvelopeError> {
    let line = line.trim_ascii();
    if !line.starts_with(b"{") {
        return Err(EnvelopeError::ItemHeaderNotObject { item });
    }
    let header: ItemHeader = serde_json::from_slice(line).map_err(|source| {
        if source.is_data() {
            EnvelopeError::ItemHeaderInvalid { item, source }
        } else {
            EnvelopeError::ItemHeaderSyntax { item, source }
        }
    })?;
    let item_type = header
        .item_type
        .ok_or(EnvelopeError::MissingType { item })?;
    Ok((item_type, header.length))
}

/// A payload of exactly `length` bytes at the start of `input`, and what follows its newline.
fn length_delimited<'a>(
    input: &'a [u8],
    length: u64,
    item: usize,
    limits: &Limits,
) -> Result<(&'a [u8], &'a [u8]), EnvelopeError> {
    let too_large = EnvelopeError::ItemTooLarge {
        item,
        limit: limits.max_item_bytes,
    };
    let size = usize::try_from(length).map_err(|_| too_large)?;
    if size > limits.max_item_bytes {
        return Err(EnvelopeError::ItemTooLarge {
            item,
            limit: limits.max_item_bytes,
        });
    }
    if size > input.len() {
        return Err(EnvelopeError::LengthPastEnd { item, length });
    }
    let (payload, tail) = input.split_at(size);
    let tail = match tail {
        [] => tail,
        [b'\n', rest @ ..] | [b'\r', b'\n', rest @ ..] => rest,
        _ => return Err(EnvelopeError::NoNewlineAfterPayload { item, length }),
    };
    Ok((payload, tail))
}

/// The line at the start of `input` (without its `\n`) and what follows, or None when the line
/// is longer than `max` bytes. Only `max + 1` bytes are searched, so a huge line costs no more
/// than a short one.
fn split_line(input: &[u8], max: usize) -> Option<(&[u8], &[u8])> {
    let window = input.get(..max.saturating_add(1)).unwrap_or(input);
    match window.iter().position(|&b| b == b'\n') {
        Some(end) => {
            let (line, rest) = input.split_at(end);
            Some((line, rest.get(1..).unwrap_or_default()))
        }
        None if input.len() <= max => Some((input, &[])),
        None => None,
    }
}

/// `input` without its leading lines that hold only whitespace (between items, or at the end).
fn skip_blank_lines(mut input: &[u8]) -> &[u8] {
    loop {
        let blank = input
            .iter()
            .take_while(|&&b| b != b'\n' && b.is_ascii_whitespace())
            .count();
        match input.get(blank) {
            Some(b'\n') => input = input.get(blank + 1..).unwrap_or_default(),
            None => return &[],
            Some(_) => return input,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits::default()
    }

    fn fixture(name: &str) -> Vec<u8> {
        let path = format!(
            "{}/../tests/fixtures/sentry/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    fn types(envelope: &Envelope<'_>) -> Vec<&'static str> {
        envelope
            .items
            .iter()
            .map(|i| i.item_type.as_str())
            .collect()
    }

    #[test]
    fn fixtures_parse_to_their_items() {
        let cases: [(&str, &[(&str, usize)]); 7] = [
            ("python_chained.envelope", &[("event", 3880)]),
            ("python_message.envelope", &[("event", 752)]),
            ("javascript_browser.envelope", &[("event", 1747)]),
            ("transaction_fastapi.envelope", &[("transaction", 2160)]),
            ("transaction_node.envelope", &[("transaction", 1064)]),
            ("session.envelope", &[("session", 374)]),
            (
                "client_report.envelope",
                &[("attachment", 37), ("client_report", 167)],
            ),
        ];
        for (name, expected) in cases {
            let body = fixture(name);
            let envelope = parse(&body, &limits()).unwrap_or_else(|e| panic!("{name}: {e}"));
            let found: Vec<&str> = types(&envelope);
            let wanted: Vec<&str> = expected.iter().map(|(t, _)| *t).collect();
            assert_eq!(found, wanted, "{name}");
            assert_eq!(
                envelope.header.dsn.as_deref(),
                Some("https://PUBLICKEY@observe.example/42"),
                "{name}"
            );
            assert!(envelope.header.sent_at.is_some(), "{name}");
            for (item, (_, length)) in envelope.items.iter().zip(expected) {
                assert_eq!(item.payload.len(), *length, "{name}");
                if item.item_type != ItemType::Attachment {
                    let json: serde_json::Value = serde_json::from_slice(item.payload)
                        .unwrap_or_else(|e| panic!("{name}: payload is not JSON: {e}"));
                    assert!(json.is_object(), "{name}");
                }
            }
        }
        let body = fixture("python_chained.envelope");
        let envelope = parse(&body, &limits()).unwrap();
        assert_eq!(
            envelope.header.event_id.as_deref(),
            Some("6f4a2d3cb5e84b0c9a1c2f0e8d7b6a51")
        );
        // The attachment is binary, newlines and all; only its `length` delimits it.
        let body = fixture("client_report.envelope");
        let envelope = parse(&body, &limits()).unwrap();
        assert!(envelope.items[0].payload.starts_with(b"\x89PNG\r\n"));
        assert!(envelope.items[0].payload.ends_with(b"\n\n\xff\xfe"));
    }

    #[test]
    fn items_with_and_without_length() {
        let body = b"{\"event_id\":\"9ec79c33ec9942ab8353589fcb2e04dc\"}\n\
            {\"type\":\"attachment\",\"length\":10,\"content_type\":\"text/plain\"}\n\
            \xef\xbb\xbfHello\r\n\n\
            {\"type\":\"event\"}\n\
            {\"message\":\"hello world\"}\n\
            {\"type\":\"attachment\",\"length\":7}\n\
            a\nb\n\ncd\n";
        let envelope = parse(body, &limits()).unwrap();
        assert_eq!(types(&envelope), vec!["attachment", "event", "attachment"]);
        assert_eq!(envelope.items[0].payload, b"\xef\xbb\xbfHello\r\n");
        assert_eq!(envelope.items[1].payload, b"{\"message\":\"hello world\"}");
        assert_eq!(envelope.items[2].payload, b"a\nb\n\ncd", "newlines inside");
    }

    #[test]
    fn empty_payloads_and_missing_final_newlines() {
        // The spec's examples: two empty attachments, with and without the last newline.
        for body in [
            &b"{}\n{\"type\":\"attachment\",\"length\":0}\n\n{\"type\":\"attachment\",\"length\":0}\n\n"[..],
            b"{}\n{\"type\":\"attachment\",\"length\":0}\n\n{\"type\":\"attachment\",\"length\":0}\n",
            b"{}\n{\"type\":\"attachment\",\"length\":0}\n\n{\"type\":\"attachment\",\"length\":0}",
        ] {
            let envelope = parse(body, &limits()).unwrap();
            assert_eq!(types(&envelope), vec!["attachment", "attachment"]);
            assert!(envelope.items.iter().all(|i| i.payload.is_empty()));
        }
        // Implicit length, ended by a newline, by the end of the body, or empty.
        let envelope = parse(b"{}\n{\"type\":\"session\"}\nhelloworld", &limits()).unwrap();
        assert_eq!(envelope.items[0].payload, b"helloworld");
        let envelope = parse(
            b"{}\n{\"type\":\"session\"}\n\n{\"type\":\"event\"}\n{}\n\n\n",
            &limits(),
        )
        .unwrap();
        assert_eq!(types(&envelope), vec!["session", "event"]);
        assert_eq!(envelope.items[0].payload, b"");
        assert_eq!(envelope.items[1].payload, b"{}");
        let envelope = parse(b"{}\n{\"type\":\"event\"}", &limits()).unwrap();
        assert_eq!(envelope.items[0].payload, b"");
        // `\r` before a newline belongs to an implicit-length payload (the spec), and a
        // `\r\n` after a length-delimited one is its newline (lenience).
        let envelope = parse(
            b"{}\r\n{\"type\":\"event\"}\r\n{}\r\n{\"type\":\"event\",\"length\":2}\r\n{}\r\n",
            &limits(),
        )
        .unwrap();
        assert_eq!(envelope.items[0].payload, b"{}\r");
        assert_eq!(envelope.items[1].payload, b"{}");
    }

    #[test]
    fn header_only_envelopes() {
        for body in [
            &b"{}"[..],
            b"{}\n",
            b"{}\n\n",
            b"{\"event_id\":\"x\",\"sdk\":{\"name\":\"s\"}}\n",
        ] {
            let envelope = parse(body, &limits()).unwrap();
            assert!(envelope.items.is_empty());
        }
        let envelope = parse(b"{\"sent_at\":null,\"x\":[1]}", &limits()).unwrap();
        assert_eq!(envelope.header, EnvelopeHeader::default());
    }

    #[test]
    fn malformed_envelopes_are_named_precisely() {
        let cases: [(&[u8], &str); 11] = [
            (b"", "the body is empty: an envelope starts with a header line (`{}` at least)"),
            (b"\n{\"type\":\"event\"}\n{}", "the body is empty: an envelope starts with a header line (`{}` at least)"),
            (b"[1]\n", "the envelope header is not a JSON object"),
            (b"{\"event_id\":\n", "the envelope header is not JSON: EOF while parsing"),
            (b"{\"event_id\":5}", "the envelope header is not valid: invalid type: integer `5`, expected a string"),
            (
                b"{}\n{\"type\":\"event\"}\n{}\n{\"type\":\"event\",}\n{}",
                "item 2: its header is not JSON: trailing comma",
            ),
            (b"{}\n{\"length\":2}\n{}", "item 1: its header has no `type`"),
            (b"{}\nhello\n", "item 1: its header is not a JSON object"),
            (b"{}\n{\"type\":\"event\",\"length\":-1}\n", "item 1: its header is not valid: invalid value: integer `-1`, expected u64"),
            (b"{}\n{\"type\":\"event\",\"length\":500}\n{}\n", "item 1: `length` 500 runs past the end of the body"),
            (b"{}\n{\"type\":\"event\",\"length\":1}\n{}\n", "item 1: its payload of `length` 1 is followed by neither a newline nor the end of the body (is `length` right?)"),
        ];
        // serde_json's own words follow the colon; only their start is ours to fix.
        for (body, message) in cases {
            let error = parse(body, &limits()).unwrap_err().to_string();
            assert!(
                error.starts_with(message),
                "{:?}: {error}",
                String::from_utf8_lossy(body)
            );
        }
        // The cause is kept for the logs.
        let error = parse(b"{}\n{\"type\":}\n", &limits()).unwrap_err();
        assert!(std::error::Error::source(&error).is_some());
    }

    #[test]
    fn limits_are_enforced() {
        let small = Limits {
            max_items: 2,
            max_header_bytes: 32,
            max_item_bytes: 8,
        };
        let error = |body: &[u8]| parse(body, &small).unwrap_err().to_string();
        assert_eq!(
            error(b"{}\n{\"type\":\"a\"}\n1\n{\"type\":\"b\"}\n2\n{\"type\":\"c\"}\n3\n"),
            "more than 2 items"
        );
        assert!(parse(b"{}\n{\"type\":\"a\"}\n1\n{\"type\":\"b\"}\n2\n\n", &small).is_ok());
        assert_eq!(
            error(b"{}\n{\"type\":\"a\"}\n1\n{\"type\":\"b\"}\n123456789\n"),
            "item 2 is larger than 8 bytes"
        );
        assert_eq!(
            error(b"{}\n{\"type\":\"a\",\"length\":9}\n123456789\n"),
            "item 1 is larger than 8 bytes"
        );
        let wide = Limits {
            max_header_bytes: 1024,
            ..small
        };
        let huge = |body: &[u8]| parse(body, &wide).unwrap_err().to_string();
        assert!(
            huge(b"{}\n{\"type\":\"a\",\"length\":99999999999999999999}\n")
                .starts_with("item 1: its header is not valid: ")
        );
        assert_eq!(
            huge(b"{}\n{\"type\":\"a\",\"length\":18446744073709551615}\n"),
            "item 1 is larger than 8 bytes"
        );
        assert!(parse(b"{}\n{\"type\":\"a\",\"length\":8}\n12345678", &small).is_ok());
        let long_header = format!("{{\"event_id\":\"{}\"}}\n", "a".repeat(32));
        assert_eq!(
            error(long_header.as_bytes()),
            "the envelope header is longer than 32 bytes"
        );
        let long_item_header = format!("{{}}\n{{\"type\":\"{}\"}}\n\n", "a".repeat(32));
        assert_eq!(
            error(long_item_header.as_bytes()),
            "item 1: its header is longer than 32 bytes"
        );
        // Exactly at the limits passes.
        let exact = format!("{{\"event_id\":\"{}\"}}", "a".repeat(32 - 15));
        assert_eq!(exact.len(), 32);
        assert!(parse(exact.as_bytes(), &small).is_ok());
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn item_type() -> impl Strategy<Value = &'static str> {
            prop::sample::select(vec![
                "event",
                "transaction",
                "session",
                "sessions",
                "client_report",
                "attachment",
                "user_report",
                "profile",
                "replay_event",
            ])
        }

        /// An item: its type, its payload, and whether its header carries `length`.
        fn item() -> impl Strategy<Value = (&'static str, Vec<u8>, bool)> {
            (
                item_type(),
                prop::collection::vec(any::<u8>(), 0..64),
                any::<bool>(),
            )
                .prop_map(|(t, mut payload, with_length)| {
                    if !with_length {
                        // Without `length` a payload cannot hold a newline.
                        payload.retain(|&b| b != b'\n');
                    }
                    (t, payload, with_length)
                })
        }

        proptest! {
            #[test]
            fn arbitrary_bytes_never_panic_and_stay_within_limits(
                body in prop_oneof![
                    prop::collection::vec(any::<u8>(), 0..512),
                    // Mostly well-formed lines, so parsing gets past the header.
                    prop::collection::vec(
                        prop::sample::select(vec![
                            &b"{}\n"[..], b"{\"type\":\"event\"}\n", b"{\"type\":\"a\",\"length\":3}\n",
                            b"{\"type\":\"a\",\"length\":0}", b"abc", b"\n", b"\r\n", b"{\"length\":1}\n", b"x",
                        ]),
                        0..40,
                    ).prop_map(|parts| parts.concat()),
                ],
                max_items in 0usize..6,
                max_header_bytes in 0usize..40,
                max_item_bytes in 0usize..16,
            ) {
                let limits = Limits { max_items, max_header_bytes, max_item_bytes };
                if let Ok(envelope) = parse(&body, &limits) {
                    prop_assert!(envelope.items.len() <= max_items);
                    for item in &envelope.items {
                        prop_assert!(item.payload.len() <= max_item_bytes);
                    }
                }
            }

            #[test]
            fn built_envelopes_parse_back(
                items in prop::collection::vec(item(), 0..12),
                final_newline in any::<bool>(),
            ) {
                let mut body = b"{\"event_id\":\"9ec79c33ec9942ab8353589fcb2e04dc\"}".to_vec();
                for (t, payload, with_length) in &items {
                    body.push(b'\n');
                    let header = if *with_length {
                        format!("{{\"type\":\"{t}\",\"length\":{}}}", payload.len())
                    } else {
                        format!("{{\"type\":\"{t}\"}}")
                    };
                    body.extend_from_slice(header.as_bytes());
                    body.push(b'\n');
                    body.extend_from_slice(payload);
                }
                if final_newline {
                    body.push(b'\n');
                }
                let envelope = parse(&body, &Limits::default()).map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert_eq!(envelope.items.len(), items.len());
                for (parsed, (t, payload, _)) in envelope.items.iter().zip(&items) {
                    prop_assert_eq!(parsed.item_type.clone(), ItemType::from_header(t));
                    prop_assert_eq!(parsed.payload, &payload[..]);
                }
            }
        }
    }
}
