//! Error fingerprints: which occurrences are "the same error" (SPEC §6).
//!
//! An SDK-given fingerprint wins. Otherwise the fingerprint hashes the exception type, the
//! message with its variable parts masked (UUIDs, hex, numbers, quoted values), and the top
//! in-app frames by function and module, never by line number. So a new line number, a
//! different id or count in the message keeps the group; a different exception type or a
//! different top in-app frame splits it.

use sha2::{Digest, Sha256};

/// How many frames, from the top (where the error was raised), take part.
pub const TOP_FRAMES: usize = 5;

/// One stack frame as SDKs send it. Frames are ordered as Sentry orders them: oldest call
/// first, the frame that raised last.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Frame {
    pub function: Option<String>,
    /// The module, or the file name when the SDK has no module.
    pub module: Option<String>,
    pub lineno: Option<u32>,
    pub in_app: Option<bool>,
}

/// The stack trace of an occurrence: structured frames, or the raw text some SDKs send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StackTrace<'a> {
    Frames(&'a [Frame]),
    Text(&'a str),
    None,
}

/// The group key of an occurrence, as 64 hex characters.
pub fn fingerprint(
    error_type: &str,
    message: &str,
    stack: StackTrace<'_>,
    sdk_fingerprint: Option<&str>,
) -> String {
    let mut hasher = Sha256::new();
    match sdk_fingerprint.map(str::trim).filter(|f| !f.is_empty()) {
        Some(given) => {
            // Its own namespace, so a given fingerprint never equals a computed one by chance.
            hasher.update(b"sdk\n");
            hasher.update(given.as_bytes());
        }
        None => {
            hasher.update(b"computed\n");
            hasher.update(error_type.trim().as_bytes());
            hasher.update(b"\n");
            hasher.update(normalise_message(message).as_bytes());
            for frame in top_frames(&stack) {
                hasher.update(b"\n");
                hasher.update(frame.as_bytes());
            }
        }
    }
    hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The frames that take part, as `module:function` lines, innermost first.
fn top_frames(stack: &StackTrace<'_>) -> Vec<String> {
    match stack {
        StackTrace::Frames(frames) => {
            let in_app: Vec<&Frame> = frames.iter().filter(|f| f.in_app == Some(true)).collect();
            // Without in-app marks, every frame counts.
            let chosen: Vec<&Frame> = if in_app.is_empty() {
                frames.iter().collect()
            } else {
                in_app
            };
            chosen
                .iter()
                .rev()
                .take(TOP_FRAMES)
                .map(|f| {
                    format!(
                        "{}:{}",
                        f.module.as_deref().unwrap_or("").trim(),
                        f.function.as_deref().unwrap_or("").trim()
                    )
                })
                .collect()
        }
        // Text traces differ by language; their first lines with numbers (line, column,
        // address) masked are a stable enough stand-in.
        StackTrace::Text(text) => text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .take(TOP_FRAMES + 1)
            .map(normalise_message)
            .collect(),
        StackTrace::None => Vec::new(),
    }
}

/// The message with its variable parts masked and whitespace collapsed.
pub fn normalise_message(message: &str) -> String {
    let chars: Vec<char> = message.chars().collect();
    let mut out = String::with_capacity(message.len());
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        // Quoted values: 'x', "x", `x` (unterminated quotes are left alone).
        if matches!(c, '\'' | '"' | '`') {
            if let Some(len) = chars[i + 1..].iter().position(|&d| d == c) {
                out.push_str("<str>");
                i += len + 2;
                continue;
            }
        }
        // A minus sign starting a number belongs to it (`-5` and `7` are both <num>).
        let signed_number = c == '-'
            && chars.get(i + 1).is_some_and(char::is_ascii_digit)
            && !out
                .chars()
                .last()
                .is_some_and(|p| p.is_ascii_alphanumeric());
        if c.is_ascii_alphanumeric() || signed_number {
            // A whole token of letters, digits, '-' and '.', decided as one.
            let start = i;
            i += 1;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || matches!(chars[i], '-' | '.' | '_'))
            {
                i += 1;
            }
            let token: String = chars[start..i].iter().collect();
            out.push_str(&mask_token(&token));
            continue;
        }
        if c.is_whitespace() {
            if !out.ends_with(' ') {
                out.push(' ');
            }
        } else {
            out.push(c);
        }
        i += 1;
    }
    out.trim().to_string()
}

/// A token as it takes part: variable-looking tokens become placeholders; words stay, with
/// any embedded numbers masked (`user42` and `user43` are the same word).
fn mask_token(token: &str) -> String {
    let trimmed = token.trim_end_matches('.');
    let trailing = &token[trimmed.len()..];
    let masked = if is_uuid(trimmed) {
        "<uuid>".to_string()
    } else if is_hex(trimmed) {
        "<hex>".to_string()
    } else if is_number(trimmed) {
        "<num>".to_string()
    } else {
        mask_digit_runs(trimmed)
    };
    format!("{masked}{trailing}")
}

fn is_uuid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5
        && groups.iter().map(|g| g.len()).eq([8, 4, 4, 4, 12])
        && groups
            .iter()
            .all(|g| g.chars().all(|c| c.is_ascii_hexdigit()))
}

/// `0x1f`, or a run of 8+ hex digits with at least one digit and one letter (hashes, ids).
fn is_hex(s: &str) -> bool {
    if let Some(rest) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        return !rest.is_empty() && rest.chars().all(|c| c.is_ascii_hexdigit());
    }
    s.len() >= 8
        && s.chars().all(|c| c.is_ascii_hexdigit())
        && s.chars().any(|c| c.is_ascii_digit())
        && s.chars().any(|c| c.is_ascii_alphabetic())
}

/// Integers, decimals, version-like dotted numbers, negative numbers.
fn is_number(s: &str) -> bool {
    let s = s.strip_prefix('-').unwrap_or(s);
    !s.is_empty()
        && s.chars().any(|c| c.is_ascii_digit())
        && s.chars()
            .all(|c| c.is_ascii_digit() || matches!(c, '.' | '_'))
}

fn mask_digit_runs(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut in_digits = false;
    for c in s.chars() {
        if c.is_ascii_digit() {
            if !in_digits {
                out.push('#');
            }
            in_digits = true;
        } else {
            out.push(c);
            in_digits = false;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn frame(module: &str, function: &str, lineno: u32, in_app: bool) -> Frame {
        Frame {
            function: Some(function.into()),
            module: Some(module.into()),
            lineno: Some(lineno),
            in_app: Some(in_app),
        }
    }

    fn fp(ty: &str, msg: &str, frames: &[Frame]) -> String {
        fingerprint(ty, msg, StackTrace::Frames(frames), None)
    }

    #[test]
    fn variable_parts_are_masked() {
        assert_eq!(
            normalise_message("User 42 not found in 'accounts' (id=3f2b8c1e-0a4d-4e5f-9a6b-7c8d9e0f1a2b, took 12.5ms)"),
            "User <num> not found in <str> (id=<uuid>, took #.#ms)"
        );
        assert_eq!(
            normalise_message("pointer 0x7ffdcafe and hash deadbeef12"),
            "pointer <hex> and hash <hex>"
        );
        assert_eq!(
            normalise_message("order ord_123 failed"),
            "order ord_# failed"
        );
        assert_eq!(normalise_message("  many \n  spaces  "), "many spaces");
        assert_eq!(
            normalise_message("version 1.2.3 is bad."),
            "version <num> is bad."
        );
        assert_eq!(
            normalise_message("balance -5 is below 3"),
            normalise_message("balance 0.5 is below 3")
        );
        assert_eq!(
            normalise_message("range 3-5"),
            normalise_message("range 10-200")
        );
        assert_eq!(normalise_message("it's unterminated"), "it's unterminated");
    }

    #[test]
    fn the_same_error_at_another_line_or_with_other_ids_keeps_its_group() {
        let a = [
            frame("app.db", "load", 10, true),
            frame("app.api", "get_user", 20, true),
        ];
        let b = [
            frame("app.db", "load", 99, true),
            frame("app.api", "get_user", 7, true),
        ];
        assert_eq!(
            fp("KeyError", "user 1 missing", &a),
            fp("KeyError", "user 2 missing", &b)
        );
    }

    #[test]
    fn another_type_or_top_in_app_frame_splits_the_group() {
        let a = [frame("app.api", "get_user", 20, true)];
        let b = [frame("app.api", "get_order", 20, true)];
        assert_ne!(fp("KeyError", "missing", &a), fp("KeyError", "missing", &b));
        assert_ne!(
            fp("KeyError", "missing", &a),
            fp("ValueError", "missing", &a)
        );
    }

    #[test]
    fn library_frames_do_not_count_when_in_app_frames_exist() {
        let a = [
            frame("app.api", "handler", 1, true),
            frame("requests.sessions", "send", 5, false),
        ];
        let b = [
            frame("app.api", "handler", 1, true),
            frame("httpx.client", "post", 9, false),
        ];
        assert_eq!(
            fp("Timeout", "timed out", &a),
            fp("Timeout", "timed out", &b)
        );
    }

    #[test]
    fn only_the_top_frames_count() {
        let mut deep: Vec<Frame> = (0..20)
            .map(|n| frame("app", &format!("f{n}"), n, true))
            .collect();
        let before = fp("E", "m", &deep);
        deep[0].function = Some("entry_point_changed".into());
        assert_eq!(
            fp("E", "m", &deep),
            before,
            "a frame far from the top does not count"
        );
        deep[19].function = Some("raiser_changed".into());
        assert_ne!(fp("E", "m", &deep), before);
    }

    #[test]
    fn an_sdk_fingerprint_wins_and_never_equals_a_computed_one() {
        let a = [frame("app", "x", 1, true)];
        let given = fingerprint("A", "one", StackTrace::Frames(&a), Some("checkout-timeout"));
        assert_eq!(
            given,
            fingerprint("B", "two", StackTrace::None, Some("checkout-timeout"))
        );
        assert_ne!(given, fingerprint("A", "one", StackTrace::Frames(&a), None));
        assert_eq!(
            fingerprint("A", "one", StackTrace::None, Some("  ")),
            fingerprint("A", "one", StackTrace::None, None),
            "a blank SDK fingerprint is no fingerprint"
        );
        assert_eq!(given.len(), 64);
    }

    #[test]
    fn text_traces_ignore_line_and_column_numbers() {
        let a = "TypeError: x is undefined\n    at render (app.js:10:5)\n    at main (app.js:99:1)";
        let b =
            "TypeError: x is undefined\n    at render (app.js:11:7)\n    at main (app.js:100:3)";
        let c = "TypeError: x is undefined\n    at paint (app.js:10:5)\n    at main (app.js:99:1)";
        let f = |t| fingerprint("TypeError", "x is undefined", StackTrace::Text(t), None);
        assert_eq!(f(a), f(b));
        assert_ne!(f(a), f(c));
    }

    proptest! {
        #[test]
        fn numbers_and_uuids_in_messages_never_split_a_group(
            n in any::<u64>(), m in any::<u64>(), f in -1.0e9f64..1.0e9,
            u1 in "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
            u2 in "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
        ) {
            let frames = [frame("app.jobs", "run", 3, true)];
            let one = fp("JobError", &format!("job {n} for {u1} failed after {f} s"), &frames);
            let two = fp("JobError", &format!("job {m} for {u2} failed after {} s", -f - 1.5), &frames);
            prop_assert_eq!(one, two);
        }

        #[test]
        fn line_numbers_never_split_a_group(lines in proptest::collection::vec(any::<u32>(), 1..10)) {
            let a: Vec<Frame> = lines.iter().enumerate().map(|(i, _)| frame("app", &format!("f{i}"), 1, true)).collect();
            let b: Vec<Frame> = lines.iter().enumerate().map(|(i, l)| frame("app", &format!("f{i}"), *l, true)).collect();
            prop_assert_eq!(fp("E", "m", &a), fp("E", "m", &b));
        }

        #[test]
        fn quoted_values_never_split_a_group(a in "[a-zA-Z0-9 _./:-]{0,30}", b in "[a-zA-Z0-9 _./:-]{0,30}") {
            prop_assert_eq!(
                fp("E", &format!("no such key '{a}' in table"), &[]),
                fp("E", &format!("no such key '{b}' in table"), &[])
            );
        }

        #[test]
        fn different_top_functions_always_split(f1 in "[a-z_]{1,12}", f2 in "[a-z_]{1,12}") {
            prop_assume!(f1 != f2);
            prop_assert_ne!(
                fp("E", "m", &[frame("app", &f1, 1, true)]),
                fp("E", "m", &[frame("app", &f2, 1, true)])
            );
        }

        #[test]
        fn normalising_never_panics_and_is_idempotent(s in "\\PC{0,200}") {
            let once = normalise_message(&s);
            prop_assert_eq!(normalise_message(&once), once);
        }
    }
}
