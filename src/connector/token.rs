//! OAuth 2.0 client-credentials tokens (RFC 6749 §4.4), one per connector, cached until
//! shortly before they expire so a burst of deliveries costs one token request.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde::Deserialize;

/// A token is renewed this long before the expiry the server stated.
const MARGIN: Duration = Duration::from_secs(30);
/// When the server states no expiry.
const DEFAULT_LIFETIME: Duration = Duration::from_secs(300);

#[derive(Default)]
pub struct Tokens {
    /// Connector id → (access token, good until). One lock for all: a token request is
    /// rare, and holding the lock while one runs keeps a burst from asking many times.
    cache: tokio::sync::Mutex<HashMap<String, (String, Instant)>>,
}

/// Where and as whom to ask (environment already expanded).
pub struct Client<'a> {
    pub token_url: &'a str,
    pub client_id: &'a str,
    pub client_secret: &'a str,
    pub scope: Option<&'a str>,
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    #[serde(default)]
    expires_in: Option<u64>,
}

impl Tokens {
    /// A valid access token for `connector`, asking the token endpoint when the cached
    /// one is missing or about to expire.
    pub async fn get(
        &self,
        http: &reqwest::Client,
        connector: &str,
        client: &Client<'_>,
    ) -> Result<String, String> {
        let mut cache = self.cache.lock().await;
        if let Some((token, until)) = cache.get(connector)
            && Instant::now() < *until
        {
            return Ok(token.clone());
        }
        let mut form = vec![("grant_type", "client_credentials")];
        if let Some(scope) = client.scope {
            form.push(("scope", scope));
        }
        let answer = http
            .post(client.token_url)
            .basic_auth(client.client_id, Some(client.client_secret))
            .form(&form)
            .send()
            .await
            .map_err(|e| format!("cannot reach the token endpoint: {}", e.without_url()))?;
        let status = answer.status();
        if !status.is_success() {
            return Err(format!("the token endpoint answered {status}"));
        }
        let token: TokenAnswer = answer
            .json()
            .await
            .map_err(|e| format!("the token endpoint's answer has no access_token: {e}"))?;
        let lifetime = token
            .expires_in
            .map_or(DEFAULT_LIFETIME, Duration::from_secs)
            .saturating_sub(MARGIN);
        cache.insert(
            connector.to_string(),
            (token.access_token.clone(), Instant::now() + lifetime),
        );
        Ok(token.access_token)
    }

    /// Drops `connector`'s token (the system refused it).
    pub async fn forget(&self, connector: &str) {
        self.cache.lock().await.remove(connector);
    }
}
