//! [`FakeSquad`]: a stand-in for the three Squad endpoints observe calls (initiate, verify,
//! charge_card) on 127.0.0.1, real HTTP, driven by the test; and the webhooks Squad would send
//! back, signed as Squad signs them (HMAC-SHA512 of the raw body, keyed with the secret key, in
//! hex) or forged.
//!
//! The fake keeps the transactions it knows as Squad would: an initiated checkout is `Pending`
//! until the test pays it ([`FakeSquad::pay`], which also issues the card's token); a
//! charge_card is recorded under its reference before the answer leaves, so a delayed answer
//! ([`FakeSquad::delay_charges`]) leaves observe not knowing what Squad knows: the charge
//! went through. Requests with another secret key are answered 401, as Squad does.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::dev::ServerHandle;
use actix_web::{web, App, HttpRequest, HttpResponse};
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha512;

/// One request the fake received.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    /// The path, e.g. `/transaction/charge_card`.
    pub path: String,
    pub authorization: Option<String>,
    /// The JSON body (`Null` for none or not JSON).
    pub body: Value,
}

/// A transaction as Squad knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transaction {
    /// Kobo.
    pub amount: i64,
    /// `Pending`, `Success`, `Failed` or `Abandoned`, as verify reports it.
    pub status: String,
    pub email: String,
    /// The card's token once paid (checkout) or the token charged (charge_card).
    pub token: Option<String>,
}

/// What charge_card answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Charge {
    /// 200, the transaction recorded as `Success`.
    Succeed,
    /// 400 "Insufficient funds", the transaction recorded as `Failed`.
    Decline,
    /// Lost on the way in: nothing recorded (verify answers 404), and a 504 only after the
    /// charge delay, so observe, timing out first, cannot know whether it went through.
    Lost,
}

/// How a webhook is signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signature {
    /// Right key, upper-case hex, as Squad sends it.
    Squad,
    /// Right key, lower-case hex (observe compares case-insensitively).
    Lowercase,
    /// The HMAC of the body under another key.
    WrongKey,
    /// The right HMAC of another body (a body changed after signing).
    OtherBody,
    /// No `x-squad-encrypted-body` header.
    Missing,
}

/// A webhook ready to send to `POST /billing/webhook`.
#[derive(Debug, Clone)]
pub struct Webhook {
    /// The raw body; the signature is over these exact bytes.
    pub body: Vec<u8>,
    /// The `x-squad-encrypted-body` header, if any.
    pub signature: Option<String>,
}

struct State {
    secret: String,
    received: Vec<Received>,
    transactions: HashMap<String, Transaction>,
    /// Tokens issued by [`FakeSquad::pay`]: charge_card refuses any other.
    tokens: HashSet<String>,
    /// Outcomes of the next charge_card calls, in order; then `charge_then`.
    charge_script: VecDeque<Charge>,
    charge_then: Charge,
    /// Time taken before answering charge_card (after recording it).
    charge_delay: Duration,
    /// The status initiate answers with (200, or a failure).
    initiate_status: u16,
    /// The status verify answers with (200: from the transactions, else a failure).
    verify_status: u16,
}

/// See the module documentation. Stopped when dropped with the test's runtime.
pub struct FakeSquad {
    pub url: String,
    /// The secret key observe must use and signs webhooks with.
    pub secret: String,
    state: Arc<Mutex<State>>,
    _server: ServerHandle,
}

/// The hex HMAC-SHA512 of `body` under `key`, in lower case.
pub fn sign(key: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha512>::new_from_slice(key.as_bytes()).expect("HMAC takes any key");
    mac.update(body);
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl FakeSquad {
    /// A fake with a fresh secret key; charges succeed at once.
    pub async fn start() -> Self {
        let secret = format!("sandbox_sk_{}", uuid::Uuid::new_v4().simple());
        let state = Arc::new(Mutex::new(State {
            secret: secret.clone(),
            received: Vec::new(),
            transactions: HashMap::new(),
            tokens: HashSet::new(),
            charge_script: VecDeque::new(),
            charge_then: Charge::Succeed,
            charge_delay: Duration::ZERO,
            initiate_status: 200,
            verify_status: 200,
        }));
        let data = web::Data::from(state.clone());
        let (url, handle) = super::serve!("the fake Squad", move || {
            App::new()
                .app_data(data.clone())
                .route("/transaction/initiate", web::post().to(initiate))
                .route("/transaction/verify/{reference}", web::get().to(verify))
                .route("/transaction/charge_card", web::post().to(charge_card))
                .default_service(web::to(unknown))
        });
        Self {
            url,
            secret,
            state,
            _server: handle,
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap()
    }

    // --- What the test does as the customer or as Squad ---

    /// The customer pays the checkout of `reference` with a card Squad tokenises as `token`:
    /// the transaction becomes `Success`. Returns it.
    pub fn pay(&self, reference: &str, token: &str) -> Transaction {
        let mut s = self.state();
        s.tokens.insert(token.to_string());
        let t = s
            .transactions
            .get_mut(reference)
            .unwrap_or_else(|| panic!("Squad never saw a checkout {reference}"));
        t.status = "Success".into();
        t.token = Some(token.to_string());
        t.clone()
    }

    /// The checkout of `reference` fails (a card refused at checkout).
    pub fn fail(&self, reference: &str) {
        let mut s = self.state();
        let t = s
            .transactions
            .get_mut(reference)
            .unwrap_or_else(|| panic!("Squad never saw a checkout {reference}"));
        t.status = "Failed".into();
    }

    /// The customer paid `amount` kobo for `reference`, whatever observe asked for.
    pub fn set_amount(&self, reference: &str, amount: i64) {
        let mut s = self.state();
        let t = s
            .transactions
            .get_mut(reference)
            .unwrap_or_else(|| panic!("Squad never saw {reference}"));
        t.amount = amount;
    }

    /// The next charge_card calls answer `script` in order, every later one `then`.
    pub fn script_charges(&self, script: &[Charge], then: Charge) {
        let mut s = self.state();
        s.charge_script = script.iter().copied().collect();
        s.charge_then = then;
    }

    /// Every later charge_card is declined.
    pub fn decline_charges(&self) {
        self.script_charges(&[], Charge::Decline);
    }

    /// charge_card records its outcome at once but answers only after `delay`.
    pub fn delay_charges(&self, delay: Duration) {
        self.state().charge_delay = delay;
    }

    /// initiate answers `status` (e.g. 500) from now on.
    pub fn fail_initiate(&self, status: u16) {
        self.state().initiate_status = status;
    }

    /// verify answers `status` from now on (200: as the transactions say).
    pub fn answer_verify_with(&self, status: u16) {
        self.state().verify_status = status;
    }

    // --- What the test reads back ---

    pub fn received(&self) -> Vec<Received> {
        self.state().received.clone()
    }

    /// The requests to `path` (exact, e.g. `/transaction/charge_card`).
    pub fn received_at(&self, path: &str) -> Vec<Received> {
        self.received()
            .into_iter()
            .filter(|r| r.path == path)
            .collect()
    }

    /// The verify requests for `reference`.
    pub fn verifications_of(&self, reference: &str) -> usize {
        self.received_at(&format!("/transaction/verify/{reference}"))
            .len()
    }

    /// All charge_card calls.
    pub fn charges(&self) -> Vec<Received> {
        self.received_at("/transaction/charge_card")
    }

    /// The charge_card calls for `reference`.
    pub fn charges_of(&self, reference: &str) -> usize {
        self.charges()
            .iter()
            .filter(|r| r.body["transaction_ref"] == reference)
            .count()
    }

    /// The distinct references charge_card was called with, in first-call order.
    pub fn charged_references(&self) -> Vec<String> {
        let mut seen = Vec::new();
        for r in self.charges() {
            let reference = r.body["transaction_ref"].as_str().unwrap_or("").to_string();
            if !seen.contains(&reference) {
                seen.push(reference);
            }
        }
        seen
    }

    /// The transaction Squad knows under `reference`.
    pub fn transaction(&self, reference: &str) -> Option<Transaction> {
        self.state().transactions.get(reference).cloned()
    }

    // --- Webhooks ---

    /// The `charge_successful` notification Squad sends for the paid `reference`, signed.
    pub fn webhook(&self, reference: &str, signature: Signature) -> Webhook {
        let t = self
            .transaction(reference)
            .unwrap_or_else(|| panic!("Squad never saw {reference}"));
        let body = json!({
            "Event": "charge_successful",
            "TransactionRef": reference,
            "Body": {
                "amount": t.amount,
                "transaction_ref": reference,
                "transaction_status": t.status,
                "email": t.email,
                "merchant_id": "SBN1EBZEQ8",
                "currency": "NGN",
                "transaction_type": "Card",
                "merchant_amount": t.amount,
                "created_at": "2025-01-01T10:00:00.000",
                "customer_mobile": null,
                "meta": {},
                "payment_information": {
                    "payment_type": "card",
                    "pan": "408408******4081",
                    "card_type": "visa",
                    "token_id": t.token,
                },
                "is_recurring": true,
            }
        });
        self.signed(serde_json::to_vec(&body).unwrap(), signature)
    }

    /// `body` with a signature made as `signature` says.
    pub fn signed(&self, body: Vec<u8>, signature: Signature) -> Webhook {
        let signature = match signature {
            Signature::Squad => Some(sign(&self.secret, &body).to_uppercase()),
            Signature::Lowercase => Some(sign(&self.secret, &body)),
            Signature::WrongKey => Some(sign("sandbox_sk_not_the_key", &body).to_uppercase()),
            Signature::OtherBody => {
                let mut other = body.clone();
                other.extend_from_slice(b" ");
                Some(sign(&self.secret, &other).to_uppercase())
            }
            Signature::Missing => None,
        };
        Webhook { body, signature }
    }
}

fn record(state: &mut State, req: &HttpRequest, body: &[u8]) -> bool {
    let authorization = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let authorised = authorization.as_deref() == Some(&format!("Bearer {}", state.secret));
    state.received.push(Received {
        method: req.method().to_string(),
        path: req.path().to_string(),
        authorization,
        body: serde_json::from_slice(body).unwrap_or(Value::Null),
    });
    authorised
}

fn unauthorised() -> HttpResponse {
    HttpResponse::Unauthorized().json(json!({
        "status": 401, "success": false, "message": "Merchant authentication failed", "data": {}
    }))
}

fn bad_request(message: &str) -> HttpResponse {
    HttpResponse::BadRequest().json(json!({
        "status": 400, "success": false, "message": message, "data": {}
    }))
}

async fn initiate(
    state: web::Data<Mutex<State>>,
    req: HttpRequest,
    body: web::Bytes,
) -> HttpResponse {
    let mut s = state.lock().unwrap();
    if !record(&mut s, &req, &body) {
        return unauthorised();
    }
    if s.initiate_status != 200 {
        let code = actix_web::http::StatusCode::from_u16(s.initiate_status).unwrap();
        return HttpResponse::build(code).json(json!({
            "status": s.initiate_status, "success": false, "message": "Something went wrong", "data": {}
        }));
    }
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let (Some(amount), Some(email), Some(reference)) = (
        body["amount"].as_i64(),
        body["email"].as_str(),
        body["transaction_ref"].as_str(),
    ) else {
        return bad_request("amount, email and transaction_ref are required");
    };
    if body["currency"] != "NGN" || body["initiate_type"] != "inline" {
        return bad_request("currency must be NGN and initiate_type inline");
    }
    if s.transactions.contains_key(reference) {
        return bad_request("Duplicate transaction reference");
    }
    s.transactions.insert(
        reference.to_string(),
        Transaction {
            amount,
            status: "Pending".into(),
            email: email.to_string(),
            token: None,
        },
    );
    HttpResponse::Ok().json(json!({
        "status": 200, "success": true, "message": "success",
        "data": {
            "auth_url": null,
            "access_token": null,
            "merchant_info": {"merchant_name": "observe tests", "merchant_id": "SBN1EBZEQ8"},
            "currency": "NGN",
            "recurring": {"frequency": null, "duration": null, "type": 0, "plan_code": null, "customer_name": null},
            "is_recurring": body["is_recurring"] == true,
            "plan_code": null,
            "callback_url": body["callback_url"],
            "transaction_ref": reference,
            "transaction_memo": null,
            "transaction_amount": amount,
            "authorized_channels": ["card", "ussd", "bank"],
            "checkout_url": format!("https://sandbox-pay.squadco.com/{reference}"),
        }
    }))
}

async fn verify(
    state: web::Data<Mutex<State>>,
    req: HttpRequest,
    reference: web::Path<String>,
) -> HttpResponse {
    let mut s = state.lock().unwrap();
    if !record(&mut s, &req, b"") {
        return unauthorised();
    }
    if s.verify_status != 200 {
        let code = actix_web::http::StatusCode::from_u16(s.verify_status).unwrap();
        return HttpResponse::build(code).json(json!({
            "status": s.verify_status, "success": false, "message": "Something went wrong", "data": {}
        }));
    }
    match s.transactions.get(reference.as_str()) {
        Some(t) => HttpResponse::Ok().json(json!({
            "status": 200, "success": true, "message": "Success",
            "data": {
                "transaction_amount": t.amount,
                "transaction_ref": reference.as_str(),
                "email": t.email,
                "transaction_status": t.status,
                "transaction_currency_id": "NGN",
                "created_at": "2025-01-01T10:00:00.000",
                "transaction_type": "Card",
                "merchant_name": "observe tests",
                "merchant_business_name": null,
                "gateway_transaction_ref": format!("{reference}_1_1"),
                "recurring": null,
                "merchant_email": "billing@observe.invalid",
                "plan_code": null,
            }
        })),
        None => HttpResponse::NotFound().json(json!({
            "status": 404, "success": false, "message": "Transaction not found", "data": {}
        })),
    }
}

async fn charge_card(
    state: web::Data<Mutex<State>>,
    req: HttpRequest,
    body: web::Bytes,
) -> HttpResponse {
    let (reply, delay) = {
        let mut s = state.lock().unwrap();
        if !record(&mut s, &req, &body) {
            return unauthorised();
        }
        let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let (Some(amount), Some(token), Some(reference)) = (
            body["amount"].as_i64(),
            body["token_id"].as_str(),
            body["transaction_ref"].as_str(),
        ) else {
            return bad_request("amount, token_id and transaction_ref are required");
        };
        if !s.tokens.contains(token) {
            return bad_request("Invalid token_id");
        }
        if s.transactions.contains_key(reference) {
            return bad_request("Duplicate transaction reference");
        }
        let outcome = s.charge_script.pop_front().unwrap_or(s.charge_then);
        if outcome == Charge::Lost {
            (
                HttpResponse::GatewayTimeout().json(json!({
                    "status": 504, "success": false, "message": "Gateway timeout", "data": {}
                })),
                s.charge_delay,
            )
        } else {
            let email = s
                .transactions
                .values()
                .find(|t| t.token.as_deref() == Some(token))
                .map(|t| t.email.clone())
                .unwrap_or_default();
            let status = if outcome == Charge::Succeed {
                "Success"
            } else {
                "Failed"
            };
            // Recorded before the answer: what Squad knows even if observe never hears it.
            s.transactions.insert(
                reference.to_string(),
                Transaction {
                    amount,
                    status: status.into(),
                    email,
                    token: Some(token.to_string()),
                },
            );
            let reply = match outcome {
                Charge::Succeed => HttpResponse::Ok().json(json!({
                    "status": 200, "success": true, "message": "Success",
                    "data": {
                        "transaction_ref": reference,
                        "transaction_amount": amount,
                        "transaction_status": "Success",
                        "gateway_transaction_ref": format!("{reference}_1_1"),
                    }
                })),
                _ => bad_request("Insufficient funds"),
            };
            (reply, s.charge_delay)
        }
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    reply
}

async fn unknown(
    state: web::Data<Mutex<State>>,
    req: HttpRequest,
    body: web::Bytes,
) -> HttpResponse {
    record(&mut state.lock().unwrap(), &req, &body);
    HttpResponse::NotFound().json(json!({
        "status": 404, "success": false, "message": "Not found", "data": {}
    }))
}

/// The fake's own checks: what the billing tests rely on it for.
mod checks {
    use std::time::{Duration, Instant};

    use serde_json::{json, Value};

    use super::{sign, Charge, FakeSquad};

    /// RFC 4231, test case 2: HMAC-SHA-512 of "what do ya want for nothing?" under "Jefe".
    #[test]
    fn signs_as_hmac_sha512_in_hex() {
        assert_eq!(
            sign("Jefe", b"what do ya want for nothing?"),
            "164b7a7bfcf819e2e395fbe73b56e0a387bd64222e831fd610270cd7ea250554\
             9758bf75c05a994a6d034f65f8f0e6fdcaeab1a34d4a6b4b636e070a38bce737"
        );
    }

    async fn post(squad: &FakeSquad, key: &str, path: &str, body: Value) -> (u16, Value) {
        let mut res = awc::Client::default()
            .post(format!("{}{path}", squad.url))
            .insert_header(("Authorization", format!("Bearer {key}")))
            .send_json(&body)
            .await
            .unwrap();
        (res.status().as_u16(), res.json().await.unwrap())
    }

    async fn verify(squad: &FakeSquad, reference: &str) -> (u16, Value) {
        let mut res = awc::Client::default()
            .get(format!("{}/transaction/verify/{reference}", squad.url))
            .insert_header(("Authorization", format!("Bearer {}", squad.secret)))
            .send()
            .await
            .unwrap();
        (res.status().as_u16(), res.json().await.unwrap())
    }

    #[actix_web::test]
    async fn keeps_transactions_as_squad_does() {
        let squad = FakeSquad::start().await;
        let key = squad.secret.clone();
        let checkout = json!({"amount": 500000, "email": "a@example.com", "currency": "NGN",
            "initiate_type": "inline", "transaction_ref": "ref-1",
            "callback_url": "http://x/billing", "is_recurring": true});
        assert_eq!(
            post(&squad, "wrong", "/transaction/initiate", checkout.clone())
                .await
                .0,
            401
        );
        let (status, body) = post(&squad, &key, "/transaction/initiate", checkout).await;
        assert_eq!(status, 200);
        assert_eq!(body["data"]["transaction_ref"], "ref-1");
        assert_eq!(
            verify(&squad, "ref-1").await.1["data"]["transaction_status"],
            "Pending"
        );
        assert_eq!(verify(&squad, "ref-9").await.0, 404);
        squad.pay("ref-1", "tok-1");
        assert_eq!(
            verify(&squad, "ref-1").await.1["data"]["transaction_status"],
            "Success"
        );

        let charge = |reference: &str, token: &str| json!({"amount": 500000, "token_id": token, "transaction_ref": reference});
        let path = "/transaction/charge_card";
        assert_eq!(
            post(&squad, &key, path, charge("ref-2", "tok-x")).await.0,
            400
        );
        squad.script_charges(&[Charge::Decline, Charge::Lost], Charge::Succeed);
        let (status, body) = post(&squad, &key, path, charge("ref-3", "tok-1")).await;
        assert_eq!(
            (status, body["message"].as_str()),
            (400, Some("Insufficient funds"))
        );
        assert_eq!(squad.transaction("ref-3").unwrap().status, "Failed");
        assert_eq!(
            post(&squad, &key, path, charge("ref-4", "tok-1")).await.0,
            504
        );
        assert_eq!(
            verify(&squad, "ref-4").await.0,
            404,
            "a lost charge is unknown"
        );

        // A slow answer: the charge is known before the answer leaves.
        squad.delay_charges(Duration::from_millis(600));
        let started = Instant::now();
        let slow = post(&squad, &key, path, charge("ref-5", "tok-1"));
        let early = async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            verify(&squad, "ref-5").await
        };
        let ((status, _), (_, known)) = futures_util::future::join(slow, early).await;
        assert_eq!(status, 200);
        assert!(started.elapsed() >= Duration::from_millis(600));
        assert_eq!(known["data"]["transaction_status"], "Success");
        assert_eq!(squad.charges_of("ref-5"), 1);
        assert_eq!(squad.charges().len(), 4);
        let methods: Vec<String> = squad.received().into_iter().map(|r| r.method).collect();
        assert_eq!(
            methods.iter().filter(|m| *m == "GET").count(),
            5,
            "{methods:?}"
        );
    }
}
