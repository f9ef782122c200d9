//! Squad (GTCO's payment API), as billing uses it: start a checkout, verify a transaction, charge
//! a saved card, and check the signature of its webhook.
//!
//! Every call carries the secret key as a bearer token and is bounded by
//! `billing.request_timeout_ms`. None is retried here: initiate and verify are safe to repeat and
//! their callers do so on their next occasion (the payer clicks again, the next run); a charge is
//! never repeated blindly — [`crate::billing`] records the reference first and asks
//! [`Squad::verify`] about it before any second try, as Squad asks integrators to ("a transaction
//! reference checker to avoid giving double value").
//!
//! Webhooks carry `x-squad-encrypted-body`: the hex HMAC-SHA512 of the raw body under the secret
//! key. [`verify_signature`] decodes the hex (either case) and compares the MACs in constant time.

use std::fmt;
use std::time::Duration;

use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use sha2::Sha512;

use crate::config::SquadSettings;
use crate::mail::HttpClient;

/// The webhook's signature header.
pub const SIGNATURE_HEADER: &str = "x-squad-encrypted-body";
/// The largest answer read from Squad.
const MAX_ANSWER_BYTES: usize = 256 * 1024;

/// Why a call to Squad did not give an answer to act on.
#[derive(Debug, thiserror::Error)]
pub enum SquadError {
    /// No answer within the timeout, or the connection broke: the outcome is unknown.
    #[error("Squad did not answer: {0}")]
    Unreachable(String),
    /// Squad answered with an error status (5xx: its trouble; 4xx: it refused the request).
    #[error("Squad answered {status}: {message}")]
    Status { status: u16, message: String },
    /// A 2xx whose body is not what Squad documents.
    #[error("Squad's answer could not be read: {0}")]
    Invalid(String),
}

impl SquadError {
    /// Whether Squad may have acted on the request although no answer came back.
    pub fn outcome_unknown(&self) -> bool {
        matches!(
            self,
            SquadError::Unreachable(_) | SquadError::Status { status: 500.., .. }
        )
    }
}

/// The status Squad gives a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxStatus {
    Success,
    /// Failed, abandoned, reversed: money did not move.
    Failed(String),
    /// Not settled yet.
    Pending,
}

impl TxStatus {
    fn parse(s: &str) -> Self {
        match s.to_ascii_lowercase().as_str() {
            "success" | "successful" => TxStatus::Success,
            "pending" | "processing" => TxStatus::Pending,
            _ => TxStatus::Failed(s.to_string()),
        }
    }
}

/// A transaction as [`Squad::verify`] or [`Squad::charge_card`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transaction {
    pub reference: String,
    pub amount: u64,
    pub status: TxStatus,
}

/// What [`Squad::verify`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verified {
    Found(Transaction),
    /// Squad has no transaction of that reference: it never received it.
    NotFound,
}

/// A checkout to start: the payer is sent to [`Squad::initiate`]'s URL.
#[derive(Debug, Clone, Serialize)]
pub struct Checkout<'a> {
    pub amount: u64,
    pub email: &'a str,
    pub transaction_ref: &'a str,
    pub callback_url: &'a str,
}

/// Squad's API at its configured base URL. Cheap to clone.
#[derive(Clone)]
pub struct Squad {
    base_url: String,
    secret_key: SecretString,
    timeout: Duration,
}

impl fmt::Debug for Squad {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Squad")
            .field("base_url", &self.base_url)
            .field("secret_key", &"[redacted]")
            .finish()
    }
}

#[derive(Deserialize)]
struct Envelope {
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    data: Option<serde_json::Value>,
}

impl Squad {
    pub fn new(settings: &SquadSettings, timeout: Duration) -> Self {
        Self {
            base_url: settings.base_url.trim_end_matches('/').to_string(),
            secret_key: settings.secret_key.clone(),
            timeout,
        }
    }

    /// The secret key the webhook signatures are made with.
    pub fn secret_key(&self) -> &SecretString {
        &self.secret_key
    }

    fn request(
        &self,
        http: &HttpClient,
        method: awc::http::Method,
        path: &str,
    ) -> awc::ClientRequest {
        let req = http
            .request(method, format!("{}{path}", self.base_url))
            .timeout(self.timeout)
            .insert_header((
                awc::http::header::AUTHORIZATION,
                format!("Bearer {}", self.secret_key.expose_secret().trim()),
            ));
        // Called inside the operation's client span.
        crate::trace::inject(req, &tracing::Span::current())
    }

    /// Sends `req` (with `body` as JSON, if any) and returns the `data` of a 2xx answer.
    async fn call(
        &self,
        req: awc::ClientRequest,
        body: Option<&serde_json::Value>,
    ) -> Result<serde_json::Value, SquadError> {
        let sent = match body {
            Some(body) => req.send_json(body).await,
            None => req.send().await,
        };
        let mut res = sent.map_err(|e| SquadError::Unreachable(e.to_string()))?;
        let status = res.status();
        let bytes = res
            .body()
            .limit(MAX_ANSWER_BYTES)
            .await
            .map_err(|e| SquadError::Unreachable(format!("reading the answer: {e}")))?;
        let envelope: Option<Envelope> = serde_json::from_slice(&bytes).ok();
        if !status.is_success() {
            let message = envelope
                .and_then(|e| e.message)
                .unwrap_or_else(|| "no message".to_string());
            return Err(SquadError::Status {
                status: status.as_u16(),
                message: message.chars().take(200).collect(),
            });
        }
        envelope
            .and_then(|e| e.data)
            .ok_or_else(|| SquadError::Invalid(format!("{status} without a data object")))
    }

    /// Starts a checkout that saves the card for renewals; returns the URL to send the payer to.
    #[tracing::instrument(level = "debug", name = "http.client", skip_all, fields(otel.name = "squad POST /transaction/initiate", otel.kind = "client", peer.service = "squad"))]
    pub async fn initiate(
        &self,
        http: &HttpClient,
        checkout: &Checkout<'_>,
    ) -> Result<String, SquadError> {
        let body = serde_json::json!({
            "amount": checkout.amount,
            "email": checkout.email,
            "currency": "NGN",
            "initiate_type": "inline",
            "transaction_ref": checkout.transaction_ref,
            "callback_url": checkout.callback_url,
            "is_recurring": true,
        });
        let req = self.request(http, awc::http::Method::POST, "/transaction/initiate");
        let data = self.call(req, Some(&body)).await?;
        data.get("checkout_url")
            .and_then(|u| u.as_str())
            .filter(|u| u.starts_with("https://") || u.starts_with("http://"))
            .map(str::to_string)
            .ok_or_else(|| SquadError::Invalid("no checkout_url".into()))
    }

    /// What Squad knows of the transaction `reference`.
    #[tracing::instrument(level = "debug", name = "http.client", skip_all, fields(otel.name = "squad GET /transaction/verify", otel.kind = "client", peer.service = "squad"))]
    pub async fn verify(&self, http: &HttpClient, reference: &str) -> Result<Verified, SquadError> {
        let path = format!("/transaction/verify/{}", path_segment(reference));
        let req = self.request(http, awc::http::Method::GET, &path);
        match self.call(req, None).await {
            Ok(data) => transaction(&data, reference).map(Verified::Found),
            Err(SquadError::Status { status: 404, .. }) => Ok(Verified::NotFound),
            Err(e) => Err(e),
        }
    }

    /// Charges the saved card `token` `amount` kobo under `reference`. A decline is
    /// `Ok` with a failed status; an error means the outcome is unknown or the call was refused.
    #[tracing::instrument(level = "debug", name = "http.client", skip_all, fields(otel.name = "squad POST /transaction/charge_card", otel.kind = "client", peer.service = "squad"))]
    pub async fn charge_card(
        &self,
        http: &HttpClient,
        token: &str,
        amount: u64,
        reference: &str,
    ) -> Result<Transaction, SquadError> {
        let body = serde_json::json!({
            "amount": amount,
            "token_id": token,
            "transaction_ref": reference,
        });
        let req = self.request(http, awc::http::Method::POST, "/transaction/charge_card");
        match self.call(req, Some(&body)).await {
            Ok(data) => transaction(&data, reference),
            // Squad refused the charge (declined, insufficient funds): nothing moved.
            Err(SquadError::Status { status, message }) if (400..500).contains(&status) => {
                Ok(Transaction {
                    reference: reference.to_string(),
                    amount,
                    status: TxStatus::Failed(message),
                })
            }
            Err(e) => Err(e),
        }
    }
}

/// A reference as one URL path segment (references are ours: letters, digits and `_`; anything
/// else is percent-encoded so it cannot change the path).
fn path_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn transaction(data: &serde_json::Value, reference: &str) -> Result<Transaction, SquadError> {
    let status = data
        .get("transaction_status")
        .and_then(|s| s.as_str())
        .ok_or_else(|| SquadError::Invalid("no transaction_status".into()))?;
    let amount = data
        .get("transaction_amount")
        .or_else(|| data.get("amount"))
        .and_then(|a| {
            a.as_u64()
                .or_else(|| a.as_str().and_then(|s| s.parse().ok()))
        })
        .ok_or_else(|| SquadError::Invalid("no transaction_amount".into()))?;
    let found = data
        .get("transaction_ref")
        .and_then(|r| r.as_str())
        .unwrap_or(reference);
    if found != reference {
        return Err(SquadError::Invalid(format!(
            "asked about {reference}, answered about another transaction"
        )));
    }
    Ok(Transaction {
        reference: reference.to_string(),
        amount,
        status: TxStatus::parse(status),
    })
}

/// Whether `signature` (the header's value: hex, either case) is the HMAC-SHA512 of `body`
/// under `secret`. Constant-time in the MAC comparison.
pub fn verify_signature(secret: &SecretString, body: &[u8], signature: Option<&str>) -> bool {
    let Some(signature) = signature else {
        return false;
    };
    let Ok(given) = hex::decode(signature.trim()) else {
        return false;
    };
    let Ok(mut mac) = Hmac::<Sha512>::new_from_slice(secret.expose_secret().as_bytes()) else {
        return false;
    };
    mac.update(body);
    mac.verify_slice(&given).is_ok()
}

/// The signature Squad would send for `body` (for tests and tools).
pub fn sign(secret: &str, body: &[u8]) -> String {
    // HMAC takes keys of any length: this cannot fail.
    let mut mac = match Hmac::<Sha512>::new_from_slice(secret.as_bytes()) {
        Ok(mac) => mac,
        Err(_) => return String::new(),
    };
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// A webhook notification, as far as billing reads it.
#[derive(Debug, Clone)]
pub struct Notification {
    pub event: String,
    pub reference: String,
    /// The saved card's token, when the payment tokenised one.
    pub token: Option<SecretString>,
    pub card_last4: Option<String>,
    pub card_brand: Option<String>,
}

/// The last four characters of a masked card number.
fn last4(pan: &str) -> String {
    let chars: Vec<char> = pan.chars().collect();
    chars[chars.len().saturating_sub(4)..].iter().collect()
}

#[derive(Deserialize)]
struct RawNotification {
    #[serde(rename = "Event")]
    event: String,
    #[serde(rename = "TransactionRef")]
    reference: Option<String>,
    #[serde(rename = "Body", default)]
    body: serde_json::Value,
}

/// Reads a webhook body (after its signature was checked); `None` if it is not one.
pub fn parse_notification(body: &[u8]) -> Option<Notification> {
    let raw: RawNotification = serde_json::from_slice(body).ok()?;
    let reference = raw
        .reference
        .or_else(|| {
            raw.body
                .get("transaction_ref")
                .and_then(|r| r.as_str())
                .map(str::to_string)
        })
        .filter(|r| !r.is_empty() && r.len() <= 200)?;
    let card = raw.body.get("payment_information");
    let text = |key: &str| {
        card.and_then(|c| c.get(key))
            .and_then(|v| v.as_str())
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    };
    Some(Notification {
        event: raw.event,
        reference,
        token: text("token_id").map(SecretString::from),
        card_last4: text("pan").map(|pan| last4(&pan)),
        card_brand: text("card_type"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn signatures_are_checked_over_the_raw_bytes_in_either_case() {
        let secret = SecretString::from("sk_test_1");
        let body = br#"{"Event":"charge_successful","TransactionRef":"r1"}"#;
        let sig = sign("sk_test_1", body);
        assert_eq!(sig.len(), 128, "hex of 64 bytes");
        assert!(verify_signature(&secret, body, Some(&sig)));
        assert!(verify_signature(&secret, body, Some(&sig.to_uppercase())));
        assert!(!verify_signature(&secret, body, None));
        assert!(!verify_signature(&secret, body, Some("")));
        assert!(!verify_signature(&secret, body, Some("zz")));
        assert!(
            !verify_signature(&secret, b"{}", Some(&sig)),
            "another body"
        );
        assert!(!verify_signature(
            &SecretString::from("sk_other"),
            body,
            Some(&sig)
        ));
    }

    #[test]
    fn notifications_give_their_reference_and_card() {
        let body = br#"{"Event":"charge_successful","TransactionRef":"obs_1","Body":{"amount":500000,"transaction_ref":"obs_1","transaction_status":"Success","payment_information":{"payment_type":"card","pan":"408408******4081","card_type":"visa","token_id":"tok_9"}}}"#;
        let n = parse_notification(body).unwrap();
        assert_eq!(n.event, "charge_successful");
        assert_eq!(n.reference, "obs_1");
        assert_eq!(
            n.token.as_ref().map(|t| t.expose_secret().to_string()),
            Some("tok_9".into())
        );
        assert_eq!(n.card_last4.as_deref(), Some("4081"));
        assert_eq!(n.card_brand.as_deref(), Some("visa"));
        assert!(parse_notification(b"not json").is_none());
        assert!(
            parse_notification(br#"{"Event":"x"}"#).is_none(),
            "no reference"
        );
    }

    #[test]
    fn statuses_and_references_are_read_as_squad_writes_them() {
        let data = serde_json::json!({"transaction_ref": "r", "transaction_amount": 5, "transaction_status": "Success"});
        assert_eq!(transaction(&data, "r").unwrap().status, TxStatus::Success);
        let failed = serde_json::json!({"transaction_ref": "r", "transaction_amount": "5", "transaction_status": "Abandoned"});
        let t = transaction(&failed, "r").unwrap();
        assert_eq!(
            (t.amount, t.status),
            (5, TxStatus::Failed("Abandoned".into()))
        );
        assert!(
            transaction(&data, "other").is_err(),
            "an answer about another reference"
        );
        assert_eq!(path_segment("obs_1/../x"), "obs_1%2F%2E%2E%2Fx");
    }

    proptest! {
        #[test]
        fn notification_parsing_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
            let _ = parse_notification(&bytes);
        }
    }
}
