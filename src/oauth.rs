//! OAuth 2.0 tokens the gateway asks other systems for (client credentials, RFC 6749
//! §4.4, with a client secret or a SMART Backend Services client assertion), cached
//! until shortly before they expire so a burst of requests costs one token request.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde::Deserialize;

/// A token is renewed this long before the expiry the server stated.
const MARGIN: Duration = Duration::from_secs(30);
/// When the server states no expiry.
const DEFAULT_LIFETIME: Duration = Duration::from_secs(300);

type Slot = std::sync::Arc<tokio::sync::Mutex<Option<(String, Instant)>>>;

#[derive(Default)]
pub struct Tokens {
    /// Key (a connector or an EHR server) → its (access token, good until). A key's
    /// lock is held while its token is asked for, so a burst asks once, and a slow
    /// token endpoint holds up only its own system.
    slots: std::sync::Mutex<HashMap<String, Slot>>,
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    #[serde(default)]
    expires_in: Option<u64>,
}

impl Tokens {
    /// A valid access token for `key`; when the cached one is missing or about to
    /// expire, `ask` builds the token request (its credentials are the caller's).
    pub async fn get(
        &self,
        key: &str,
        ask: impl FnOnce() -> Result<reqwest::RequestBuilder, String>,
    ) -> Result<String, String> {
        let slot = self.slot(key);
        let mut cached = slot.lock().await;
        if let Some((token, until)) = cached.as_ref()
            && Instant::now() < *until
        {
            return Ok(token.clone());
        }
        let answer = ask()?
            .send()
            .await
            .map_err(|e| format!("cannot reach the token endpoint: {}", e.without_url()))?;
        let status = answer.status();
        if !status.is_success() {
            return Err(format!("the token endpoint answered {status}"));
        }
        let token: TokenAnswer = answer.json().await.map_err(|e| {
            format!(
                "the token endpoint's answer is not {{\"access_token\": …, \"expires_in\": seconds}}: {}",
                e.without_url()
            )
        })?;
        let lifetime = token
            .expires_in
            .map_or(DEFAULT_LIFETIME, Duration::from_secs)
            .saturating_sub(MARGIN);
        *cached = Some((token.access_token.clone(), Instant::now() + lifetime));
        Ok(token.access_token)
    }

    /// Drops `key`'s token (the system refused it).
    pub async fn forget(&self, key: &str) {
        *self.slot(key).lock().await = None;
    }

    fn slot(&self, key: &str) -> Slot {
        self.slots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(key.to_string())
            .or_default()
            .clone()
    }
}
