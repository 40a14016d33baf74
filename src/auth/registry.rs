//! Registering clients and API keys (operator commands). Secrets are returned once,
//! here, and only their hashes are stored.

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use jsonwebtoken::jwk::JwkSet;
use sha2::{Digest, Sha256};

use super::{AuthError, ClientKind, Scopes, random_token};
use crate::hex;
use crate::store::{ApiKeyRow, ClientRow, Store};

/// What an EHR client may do when registered without `--scope`.
pub const DEFAULT_EHR_SCOPES: &str = "system/*.cruds";
/// What a CBO client may do when registered without `--scope`.
pub const DEFAULT_CBO_SCOPES: &str =
    "referrals:read referrals:write webhooks:manage directory:write";
/// Two keys per integration: the one in use and its replacement, during a rotation.
pub const MAX_ACTIVE_KEYS: usize = 2;

/// A short stable name for a value (ids of organisations registered by identifier).
pub fn short_hash(value: &str) -> String {
    hex(&Sha256::digest(value.as_bytes())[..6])
}

pub fn hash_secret(secret: &str) -> Result<String, AuthError> {
    let salt = SaltString::encode_b64(random_token(16).as_bytes())
        .map_err(|e| AuthError::Key(format!("salt: {e}")))?;
    Argon2::default()
        .hash_password(secret.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| AuthError::Key(format!("cannot hash the secret: {e}")))
}

/// Constant-time by construction (argon2's verifier compares digests that way).
pub fn verify_secret(hash: &str, secret: &str) -> bool {
    PasswordHash::new(hash)
        .map(|h| {
            Argon2::default()
                .verify_password(secret.as_bytes(), &h)
                .is_ok()
        })
        .unwrap_or(false)
}

/// Where an EHR client's public keys come from.
pub enum PublicKeys {
    Inline(String),
    Url(String),
}

pub struct NewClient {
    pub kind: ClientKind,
    pub name: String,
    /// `Organization` id the credential is bound to (required for CBOs).
    pub organization: Option<String>,
    pub scopes: Option<String>,
    pub keys: Option<PublicKeys>,
}

/// A registered client, with the secret shown this once (CBOs only).
pub struct Registered {
    pub client: ClientRow,
    pub secret: Option<String>,
}

fn checked_scopes(kind: ClientKind, given: Option<&str>) -> Result<String, AuthError> {
    let raw = given.unwrap_or(match kind {
        ClientKind::Ehr => DEFAULT_EHR_SCOPES,
        ClientKind::Cbo => DEFAULT_CBO_SCOPES,
    });
    let scopes = Scopes::parse(raw).map_err(|e| AuthError::InvalidScope(e.to_string()))?;
    let fits = match kind {
        ClientKind::Ehr => scopes.only_smart(),
        ClientKind::Cbo => scopes.only_cbo(),
    };
    if scopes.is_empty() || !fits {
        return Err(AuthError::InvalidScope(format!(
            "{} clients take {} scopes",
            kind.as_str(),
            match kind {
                ClientKind::Ehr => "SMART system/… ",
                ClientKind::Cbo =>
                    "referrals:read, referrals:write, webhooks:manage, directory:write",
            }
        )));
    }
    Ok(scopes.to_string())
}

fn checked_jwks(text: &str) -> Result<String, AuthError> {
    let set: JwkSet = serde_json::from_str(text).map_err(|e| {
        AuthError::InvalidRequest(format!("the JWKS is not a JSON Web Key Set: {e}"))
    })?;
    if set.keys.is_empty() {
        return Err(AuthError::InvalidRequest("the JWKS has no keys".into()));
    }
    for key in &set.keys {
        use jsonwebtoken::jwk::AlgorithmParameters as P;
        let public = matches!(key.algorithm, P::RSA(_) | P::EllipticCurve(_));
        if !public || jsonwebtoken::DecodingKey::from_jwk(key).is_err() {
            return Err(AuthError::InvalidRequest(
                "every JWKS key must be an RSA or EC public key".into(),
            ));
        }
        if key.common.key_id.is_none() {
            return Err(AuthError::InvalidRequest(
                "every JWKS key needs a kid".into(),
            ));
        }
    }
    Ok(serde_json::to_string(&set).expect("a JwkSet serialises"))
}

pub async fn register(store: &Store, new: NewClient, now: i64) -> Result<Registered, AuthError> {
    let scopes = checked_scopes(new.kind, new.scopes.as_deref())?;
    let (jwks, jwks_url) = match (new.kind, new.keys) {
        (ClientKind::Ehr, Some(PublicKeys::Inline(text))) => (Some(checked_jwks(&text)?), None),
        (ClientKind::Ehr, Some(PublicKeys::Url(url))) => {
            if !url.starts_with("https://") {
                return Err(AuthError::InvalidRequest(
                    "a JWKS URL must be https://".into(),
                ));
            }
            (None, Some(url))
        }
        (ClientKind::Ehr, None) => {
            return Err(AuthError::InvalidRequest(
                "an EHR client needs its public keys: --jwks FILE or --jwks-url URL".into(),
            ));
        }
        (ClientKind::Cbo, _) => (None, None),
    };
    if new.kind == ClientKind::Cbo && new.organization.is_none() {
        return Err(AuthError::InvalidRequest("a CBO client needs --org".into()));
    }
    let secret = (new.kind == ClientKind::Cbo).then(|| format!("cs_{}", random_token(32)));
    let client = ClientRow {
        client_id: format!("{}-{}", new.kind.as_str(), uuid::Uuid::new_v4().simple()),
        kind: new.kind.as_str().into(),
        organization_id: new.organization,
        name: new.name,
        scopes,
        jwks,
        jwks_url,
        secret_hash: secret.as_deref().map(hash_secret).transpose()?,
        created_at: now,
        revoked_at: None,
    };
    store.insert_client(&client).await?;
    Ok(Registered { client, secret })
}

/// A new API key for a CBO client: `live_<id>_<secret>` or `test_<id>_<secret>`.
pub async fn add_api_key(
    store: &Store,
    client_id: &str,
    live: bool,
    scopes: Option<&str>,
    now: i64,
) -> Result<(ApiKeyRow, String), AuthError> {
    let client = store
        .client(client_id)
        .await?
        .filter(|c| c.revoked_at.is_none() && c.kind == "cbo")
        .ok_or_else(|| {
            AuthError::InvalidClient(format!("{client_id:?} is not a live CBO client"))
        })?;
    let active = store
        .api_keys_of(client_id)
        .await?
        .into_iter()
        .filter(|k| k.revoked_at.is_none())
        .count();
    if active >= MAX_ACTIVE_KEYS {
        return Err(AuthError::InvalidRequest(format!(
            "{client_id} already has {MAX_ACTIVE_KEYS} active API keys; revoke one first (crossway clients revoke KEY_ID)"
        )));
    }
    let scopes = match scopes {
        Some(s) => {
            let asked = Scopes::parse(s).map_err(|e| AuthError::InvalidScope(e.to_string()))?;
            let granted = Scopes::parse(&client.scopes)
                .unwrap_or_default()
                .grant(&asked);
            if granted != asked {
                return Err(AuthError::InvalidScope(format!(
                    "an API key cannot have more than its client's scopes ({})",
                    client.scopes
                )));
            }
            granted.to_string()
        }
        None => client.scopes.clone(),
    };
    let mode = if live { "live" } else { "test" };
    let key_id = format!("k{}", &uuid::Uuid::new_v4().simple().to_string()[..15]);
    let secret = random_token(32);
    let row = ApiKeyRow {
        key_id: key_id.clone(),
        client_id: client_id.to_string(),
        mode: mode.into(),
        secret_sha256: hex(&Sha256::digest(secret.as_bytes())),
        scopes,
        created_at: now,
        revoked_at: None,
    };
    store.insert_api_key(&row).await?;
    Ok((row, format!("{mode}_{key_id}_{secret}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hashed_secret_verifies_only_itself() {
        let hash = hash_secret("s3cret").unwrap();
        assert!(hash.starts_with("$argon2id$"));
        assert!(!hash.contains("s3cret"));
        assert!(verify_secret(&hash, "s3cret"));
        assert!(!verify_secret(&hash, "s3cret "));
        assert!(!verify_secret("not a hash", "s3cret"));
    }

    #[test]
    fn scopes_must_fit_the_kind_of_client() {
        assert!(checked_scopes(ClientKind::Ehr, Some("referrals:read")).is_err());
        assert!(checked_scopes(ClientKind::Cbo, Some("system/Task.rs")).is_err());
        assert_eq!(
            checked_scopes(ClientKind::Cbo, None).unwrap(),
            DEFAULT_CBO_SCOPES
        );
    }

    #[test]
    fn a_jwks_without_usable_keys_is_refused() {
        assert!(checked_jwks("{}").is_err());
        assert!(checked_jwks(r#"{"keys": []}"#).is_err());
        assert!(
            checked_jwks(r#"{"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "1"}]}"#).is_err()
        );
    }
}
