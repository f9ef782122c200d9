//! GitHub OAuth: the authorisation URL, the code exchange and the user lookup, over awc
//! against the configured base URLs (tests point them at a local fake GitHub).

use std::time::Duration;

use secrecy::ExposeSecret;
use serde::Deserialize;

use crate::config::GithubSettings;

const TIMEOUT: Duration = Duration::from_secs(10);
/// GitHub refuses API requests without a User-Agent.
const USER_AGENT: &str = "observe";

#[derive(Debug, thiserror::Error)]
pub enum GithubError {
    #[error("GitHub sign-in is not configured")]
    NotConfigured,
    #[error("GitHub is unreachable: {0}")]
    Unreachable(String),
    #[error("GitHub refused the code: {0}")]
    CodeRejected(String),
    #[error("GitHub answered {status} to {what}")]
    Status { what: &'static str, status: u16 },
    #[error("GitHub's answer to {what} could not be read: {detail}")]
    Unreadable { what: &'static str, detail: String },
    #[error("the GitHub account has no verified email address")]
    NoVerifiedEmail,
}

/// The GitHub account behind a code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GithubUser {
    pub id: i64,
    pub login: String,
    pub name: Option<String>,
    /// Primary verified address (else any verified one), lowercased.
    pub email: String,
}

pub fn configured(settings: &GithubSettings) -> bool {
    !settings.client_id.is_empty() && !settings.client_secret.expose_secret().is_empty()
}

fn encode(value: &str) -> String {
    // RFC 3986 unreserved characters pass; everything else is percent-encoded.
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Where to send the browser to ask the user for consent.
pub fn authorize_url(settings: &GithubSettings, state: &str) -> String {
    format!(
        "{}/login/oauth/authorize?client_id={}&redirect_uri={}&scope={}&state={}&allow_signup=true",
        settings.oauth_base_url.trim_end_matches('/'),
        encode(&settings.client_id),
        encode(&settings.redirect_uri),
        encode("read:user user:email"),
        encode(state),
    )
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

#[derive(Deserialize)]
struct UserAnswer {
    id: i64,
    login: String,
    name: Option<String>,
}

#[derive(Deserialize)]
struct EmailAnswer {
    email: String,
    primary: bool,
    verified: bool,
}

/// Exchanges an authorisation code for the account behind it.
#[tracing::instrument(level = "debug", name = "http.client", skip_all, fields(otel.name = "github OAuth", otel.kind = "client", peer.service = "github"))]
pub async fn user_for_code(
    client: &awc::Client,
    settings: &GithubSettings,
    code: &str,
) -> Result<GithubUser, GithubError> {
    if !configured(settings) {
        return Err(GithubError::NotConfigured);
    }
    let unreachable = |e: &dyn std::fmt::Display| GithubError::Unreachable(e.to_string());
    let res = client
        .post(format!(
            "{}/login/oauth/access_token",
            settings.oauth_base_url.trim_end_matches('/')
        ))
        .timeout(TIMEOUT)
        .insert_header(("Accept", "application/json"))
        .insert_header(("User-Agent", USER_AGENT));
    let mut res = crate::trace::inject(res, &tracing::Span::current())
        .send_json(&serde_json::json!({
            "client_id": settings.client_id,
            "client_secret": settings.client_secret.expose_secret(),
            "code": code,
            "redirect_uri": settings.redirect_uri,
        }))
        .await
        .map_err(|e| unreachable(&e))?;
    if !res.status().is_success() {
        return Err(GithubError::Status {
            what: "the code exchange",
            status: res.status().as_u16(),
        });
    }
    let answer: TokenAnswer = res.json().await.map_err(|e| GithubError::Unreadable {
        what: "the code exchange",
        detail: e.to_string(),
    })?;
    let token = match (answer.access_token, answer.error) {
        (Some(token), None) => token,
        (_, error) => {
            return Err(GithubError::CodeRejected(
                answer
                    .error_description
                    .or(error)
                    .unwrap_or_else(|| "no access token".into()),
            ))
        }
    };

    let api = settings.api_base_url.trim_end_matches('/');
    let get = |path: &str| {
        let req = client
            .get(format!("{api}{path}"))
            .timeout(TIMEOUT)
            .insert_header(("Accept", "application/vnd.github+json"))
            .insert_header(("User-Agent", USER_AGENT))
            .insert_header(("Authorization", format!("Bearer {token}")));
        crate::trace::inject(req, &tracing::Span::current())
    };
    let mut res = get("/user").send().await.map_err(|e| unreachable(&e))?;
    if !res.status().is_success() {
        return Err(GithubError::Status {
            what: "the user lookup",
            status: res.status().as_u16(),
        });
    }
    let user: UserAnswer = res.json().await.map_err(|e| GithubError::Unreadable {
        what: "the user lookup",
        detail: e.to_string(),
    })?;
    let mut res = get("/user/emails")
        .send()
        .await
        .map_err(|e| unreachable(&e))?;
    if !res.status().is_success() {
        return Err(GithubError::Status {
            what: "the email lookup",
            status: res.status().as_u16(),
        });
    }
    let emails: Vec<EmailAnswer> = res.json().await.map_err(|e| GithubError::Unreadable {
        what: "the email lookup",
        detail: e.to_string(),
    })?;
    let email = emails
        .iter()
        .filter(|e| e.verified)
        .max_by_key(|e| e.primary)
        .map(|e| e.email.trim().to_lowercase())
        .ok_or(GithubError::NoVerifiedEmail)?;
    Ok(GithubUser {
        id: user.id,
        login: user.login,
        name: user.name,
        email,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_authorize_url_carries_encoded_parameters() {
        let mut s = crate::config::Settings::load_from(|_| None).unwrap().github;
        s.client_id = "abc".into();
        s.redirect_uri = "http://127.0.0.1:8000/auth/github/callback".into();
        let url = authorize_url(&s, "st/ate");
        assert!(url.starts_with("https://github.com/login/oauth/authorize?client_id=abc&"));
        assert!(
            url.contains("redirect_uri=http%3A%2F%2F127.0.0.1%3A8000%2Fauth%2Fgithub%2Fcallback")
        );
        assert!(url.contains("scope=read%3Auser%20user%3Aemail"));
        assert!(url.contains("state=st%2Fate"));
    }
}
