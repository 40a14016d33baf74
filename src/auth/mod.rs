//! Who is calling, and what they may do. EHR systems authenticate with SMART Backend
//! Services (a signed client assertion, RS384/ES384, against their registered public
//! keys); CBOs with a client secret or an API key. Both get a short-lived ES384 access
//! token signed with the gateway's key ([`keys`]); every request presents it and becomes
//! a [`Principal`] bound to at most one organisation.
//!
//! [`Authority`] issues the tokens (`/auth/token`) and turns a bearer value (our token or
//! a `test_`/`live_` API key) into a `Principal`; [`access`] works out what a FHIR
//! request needs of it, [`scopes`] parses and grants scopes, [`registry`] registers
//! clients (operator commands), `throttle` and `ratelimit` meter callers. Verified
//! tokens are remembered per process, so a request costs a hash lookup, not an ECDSA
//! verification; a client's registration is re-read at most every 2 s (revocation).
//!
//! Invariants: secrets are stored hashed (argon2id for client secrets, SHA-256 for
//! random API keys) and compared in constant time; an assertion's `jti` is claimed in
//! the store, so a replay fails in every process; nothing here logs a secret or token.

pub mod access;
pub mod keys;
mod ratelimit;
pub mod registry;
pub mod scopes;
mod throttle;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use keys::SigningKeys;
pub use ratelimit::RateLimiter;
pub use scopes::{CboScope, Interaction, Scopes};

use crate::store::{ClientRow, Store, StoreError};

/// `client_assertion_type` of SMART Backend Services.
pub const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// Audience of the access tokens we issue (they are only for us).
const TOKEN_AUDIENCE: &str = "crossway";
/// Access-token lifetime; also the longest an assertion may live (SMART: ≤ 5 minutes).
pub const TOKEN_TTL_SECS: u64 = 300;
/// Clock skew tolerated on assertion times.
const LEEWAY_SECS: u64 = 30;
/// How long a client's registration (revocation, keys) may be stale in this process.
const CLIENT_TTL: Duration = Duration::from_secs(2);
const JWKS_TTL: Duration = Duration::from_secs(300);
/// Verified access tokens remembered, to skip signature checks on repeat requests.
const VERIFIED_CAPACITY: usize = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("{0}")]
    InvalidRequest(String),
    #[error("{0}")]
    InvalidClient(String),
    #[error("{0}")]
    InvalidScope(String),
    #[error("{0}")]
    UnsupportedGrantType(String),
    /// No credential, or one that is not valid (expired, revoked, malformed).
    #[error("{0}")]
    Unauthenticated(String),
    /// A valid credential without the scope this request needs.
    #[error("{0}")]
    Forbidden(String),
    #[error("rate limit exceeded; retry after {retry_after} s")]
    RateLimited { retry_after: u64 },
    #[error("signing key: {0}")]
    Key(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl AuthError {
    /// The OAuth 2.0 `error` code (RFC 6749 §5.2, RFC 6750 §3.1).
    pub fn oauth_code(&self) -> &'static str {
        match self {
            AuthError::InvalidRequest(_) => "invalid_request",
            AuthError::InvalidClient(_) => "invalid_client",
            AuthError::InvalidScope(_) => "invalid_scope",
            AuthError::UnsupportedGrantType(_) => "unsupported_grant_type",
            AuthError::Unauthenticated(_) => "invalid_token",
            AuthError::Forbidden(_) => "insufficient_scope",
            AuthError::RateLimited { .. } => "rate_limited",
            AuthError::Key(_) | AuthError::Store(_) => "server_error",
        }
    }

    pub fn status(&self) -> u16 {
        match self {
            AuthError::InvalidRequest(_)
            | AuthError::InvalidScope(_)
            | AuthError::UnsupportedGrantType(_) => 400,
            AuthError::InvalidClient(_) | AuthError::Unauthenticated(_) => 401,
            AuthError::Forbidden(_) => 403,
            AuthError::RateLimited { .. } => 429,
            AuthError::Store(e) if e.is_transient() => 503,
            AuthError::Key(_) | AuthError::Store(_) => 500,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientKind {
    Ehr,
    Cbo,
}

impl ClientKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ClientKind::Ehr => "ehr",
            ClientKind::Cbo => "cbo",
        }
    }

    fn parse(s: &str) -> Option<ClientKind> {
        match s {
            "ehr" => Some(ClientKind::Ehr),
            "cbo" => Some(ClientKind::Cbo),
            _ => None,
        }
    }
}

/// An authenticated caller.
#[derive(Debug, Clone)]
pub struct Principal {
    pub client_id: String,
    pub kind: ClientKind,
    /// The organisation the credential is bound to (`Organization/{id}` is ours).
    pub organization: Option<String>,
    pub scopes: Scopes,
    pub credential: Credential,
}

/// How the caller proved who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential {
    AccessToken,
    ApiKey,
    /// `X-Crossway-Organization` with `CROSSWAY_DEV_AUTH=1`: development only.
    DevelopmentHeader,
}

impl Credential {
    pub fn as_str(self) -> &'static str {
        match self {
            Credential::AccessToken => "access-token",
            Credential::ApiKey => "api-key",
            Credential::DevelopmentHeader => "development-header",
        }
    }
}

impl Principal {
    /// Refuses unless the scopes permit `interaction` on `resource_type`.
    pub fn require(&self, resource_type: &str, interaction: Interaction) -> Result<(), AuthError> {
        if self.scopes.allows(resource_type, interaction) {
            Ok(())
        } else {
            Err(AuthError::Forbidden(format!(
                "this token has no scope for {} on {resource_type} (needs system/{resource_type}.{} or a wider scope)",
                interaction_name(interaction),
                interaction.letter(),
            )))
        }
    }

    /// Every permission a FHIR request needs ([`access::needs`]): the one check for a
    /// stand-alone request and a Bundle entry alike.
    pub fn authorize(
        &self,
        method: &str,
        path: &str,
        params: &[(String, String)],
    ) -> Result<(), AuthError> {
        for need in access::needs(method, path, params) {
            self.require(&need.resource_type, need.interaction)?;
        }
        Ok(())
    }

    pub fn require_cbo(&self, scope: CboScope) -> Result<(), AuthError> {
        if self.scopes.has(scope) {
            Ok(())
        } else {
            Err(AuthError::Forbidden(format!(
                "this credential lacks the scope {}",
                scope.name()
            )))
        }
    }
}

fn interaction_name(i: Interaction) -> &'static str {
    match i {
        Interaction::Create => "create",
        Interaction::Read => "read",
        Interaction::Update => "update",
        Interaction::Delete => "delete",
        Interaction::Search => "search",
    }
}

/// The claims of an access token we issue.
#[derive(Debug, Serialize, Deserialize)]
struct AccessClaims {
    iss: String,
    aud: String,
    sub: String,
    exp: u64,
    iat: u64,
    jti: String,
    scope: String,
    kind: ClientKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    org: Option<String>,
}

/// The claims we check in a SMART client assertion.
#[derive(Debug, Deserialize)]
struct AssertionClaims {
    exp: u64,
    jti: Option<String>,
}

/// The token endpoint's success response (RFC 6749 §5.1).
#[derive(Debug, Serialize)]
pub struct TokenResponse {
    pub access_token: String,
    pub token_type: &'static str,
    pub expires_in: u64,
    pub scope: String,
}

/// A token request, as the form and the Authorization header carry it.
#[derive(Debug, Default)]
pub struct TokenRequest {
    /// The address the request came from (for metering guesses), when known.
    pub peer: Option<std::net::IpAddr>,
    pub grant_type: Option<String>,
    pub scope: Option<String>,
    pub client_id: Option<String>,
    pub client_secret: Option<String>,
    pub client_assertion_type: Option<String>,
    pub client_assertion: Option<String>,
}

/// A registration as read at a time; `None`: no such client.
type CachedClient = (Instant, Option<Arc<ClientRow>>);

/// Issues and checks credentials. One per process, shared by every worker.
pub struct Authority {
    store: Store,
    keys: SigningKeys,
    http: reqwest::Client,
    clients: Mutex<HashMap<String, CachedClient>>,
    jwks: Mutex<HashMap<String, (Instant, Arc<JwkSet>)>>,
    verified: Mutex<HashMap<String, (u64, Principal)>>,
    limiter: RateLimiter,
    /// Meters secret guessing at the token endpoint.
    throttle: throttle::Throttle,
    /// A hash no secret matches, verified for unknown client ids so that they take as
    /// long to refuse as a wrong secret.
    decoy_hash: std::sync::OnceLock<String>,
    /// Refuse `live_` keys on a non-production gateway and `test_` keys on a production one.
    production: bool,
}

fn now_secs() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

impl Authority {
    pub fn new(
        store: Store,
        keys: SigningKeys,
        limiter: RateLimiter,
        production: bool,
    ) -> Authority {
        Authority {
            store,
            keys,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .expect("a reqwest client with rustls builds"),
            clients: Mutex::default(),
            jwks: Mutex::default(),
            verified: Mutex::default(),
            limiter,
            throttle: throttle::Throttle::new(),
            decoy_hash: std::sync::OnceLock::new(),
            production,
        }
    }

    pub fn keys(&self) -> &SigningKeys {
        &self.keys
    }

    /// A registration, at most [`CLIENT_TTL`] old (so a revocation reaches every process
    /// within that time).
    async fn client(&self, client_id: &str) -> Result<Option<Arc<ClientRow>>, AuthError> {
        if let Some((at, row)) = self.clients.lock().expect("poisoned").get(client_id)
            && at.elapsed() < CLIENT_TTL
        {
            return Ok(row.clone());
        }
        let row = self.store.client(client_id).await?.map(Arc::new);
        let mut clients = self.clients.lock().expect("poisoned");
        if clients.len() > VERIFIED_CAPACITY {
            clients.clear();
        }
        clients.insert(client_id.to_string(), (Instant::now(), row.clone()));
        Ok(row)
    }

    /// `POST /auth/token`. `token_url` is this endpoint's public URL: a client
    /// assertion must name it as its audience.
    pub async fn issue(
        &self,
        req: TokenRequest,
        token_url: &str,
    ) -> Result<TokenResponse, AuthError> {
        match req.grant_type.as_deref() {
            Some("client_credentials") => {}
            Some(other) => {
                return Err(AuthError::UnsupportedGrantType(format!(
                    "grant_type {other:?} is not supported; use client_credentials"
                )));
            }
            None => return Err(AuthError::InvalidRequest("grant_type is required".into())),
        }
        let client = match (&req.client_assertion_type, &req.client_assertion) {
            (Some(t), _) if t != JWT_BEARER => {
                return Err(AuthError::InvalidRequest(format!(
                    "client_assertion_type must be {JWT_BEARER}"
                )));
            }
            (Some(_), Some(assertion)) => self.check_assertion(assertion, token_url).await?,
            (Some(_), None) => {
                return Err(AuthError::InvalidRequest(
                    "client_assertion is required".into(),
                ));
            }
            (None, _) => self.check_secret(&req).await?,
        };
        let registered = Scopes::parse(&client.scopes).unwrap_or_default();
        let granted = match &req.scope {
            // Fewer than asked is an answer (RFC 6749 §3.3); nothing at all is not.
            Some(s) if !s.trim().is_empty() => registered.grant(&Scopes::parse_request(s)),
            _ => registered,
        };
        if granted.is_empty() {
            return Err(AuthError::InvalidScope(
                "none of the requested scopes can be granted to this client".into(),
            ));
        }
        let token = self.token_for(&client, &granted)?;
        tracing::info!(message = "Access token issued.", client_id = %client.client_id, scope = %token.scope);
        Ok(token)
    }

    /// A signed access token for `client` with `granted` scopes.
    fn token_for(&self, client: &ClientRow, granted: &Scopes) -> Result<TokenResponse, AuthError> {
        let now = now_secs();
        let claims = AccessClaims {
            iss: TOKEN_AUDIENCE.into(),
            aud: TOKEN_AUDIENCE.into(),
            sub: client.client_id.clone(),
            exp: now + TOKEN_TTL_SECS,
            iat: now,
            jti: uuid::Uuid::new_v4().to_string(),
            scope: granted.to_string(),
            kind: ClientKind::parse(&client.kind).unwrap_or(ClientKind::Cbo),
            org: client.organization_id.clone(),
        };
        Ok(TokenResponse {
            access_token: self.keys.sign(&claims)?,
            token_type: "bearer",
            expires_in: TOKEN_TTL_SECS,
            scope: claims.scope,
        })
    }

    /// An access token for a registered client, minted by an operator command
    /// (`crossway clients token`) rather than the token endpoint.
    pub async fn mint(
        &self,
        client_id: &str,
        scope: Option<&str>,
    ) -> Result<TokenResponse, AuthError> {
        let client = self
            .client(client_id)
            .await?
            .filter(|c| c.revoked_at.is_none())
            .ok_or_else(|| AuthError::InvalidClient(format!("no live client {client_id:?}")))?;
        let registered = Scopes::parse(&client.scopes).unwrap_or_default();
        let granted = match scope {
            Some(s) => registered
                .grant(&Scopes::parse(s).map_err(|e| AuthError::InvalidScope(e.to_string()))?),
            None => registered,
        };
        self.token_for(&client, &granted)
    }

    /// Unknown client, revoked client, client without a secret and wrong secret are
    /// answered alike, after the same work, so neither message nor timing tells whether
    /// a client id exists.
    async fn check_secret(&self, req: &TokenRequest) -> Result<Arc<ClientRow>, AuthError> {
        let (Some(id), Some(secret)) = (&req.client_id, &req.client_secret) else {
            return Err(AuthError::InvalidClient(
                "authenticate with client_id and client_secret (HTTP Basic or form), or with a client_assertion".into(),
            ));
        };
        self.throttle.admit(req.peer, Some(id))?;
        let client = self.client(id).await?.filter(|c| c.revoked_at.is_none());
        let hash = match client.as_ref().and_then(|c| c.secret_hash.clone()) {
            Some(h) => Some(h),
            None => Some(self.decoy_hash()?),
        };
        let secret = secret.clone();
        let matched = {
            let _permit = self.throttle.hashing().await;
            // A password hash costs tens of milliseconds: keep it off the async workers.
            tokio::task::spawn_blocking(move || {
                hash.is_some_and(|h| registry::verify_secret(&h, &secret))
            })
            .await
            .unwrap_or(false)
        };
        match client {
            Some(c) if matched && c.secret_hash.is_some() => {
                self.throttle.succeeded(req.peer, Some(id));
                Ok(c)
            }
            _ => {
                self.throttle.failed(req.peer, Some(id));
                Err(AuthError::InvalidClient(
                    "unknown client or wrong secret".into(),
                ))
            }
        }
    }

    fn decoy_hash(&self) -> Result<String, AuthError> {
        if let Some(h) = self.decoy_hash.get() {
            return Ok(h.clone());
        }
        let h = registry::hash_secret(&random_token(32))?;
        Ok(self.decoy_hash.get_or_init(|| h).clone())
    }

    async fn check_assertion(
        &self,
        assertion: &str,
        token_url: &str,
    ) -> Result<Arc<ClientRow>, AuthError> {
        let bad = |why: &str| AuthError::InvalidClient(format!("client_assertion: {why}"));
        let header = jsonwebtoken::decode_header(assertion).map_err(|_| bad("not a JWT"))?;
        if !matches!(header.alg, Algorithm::RS384 | Algorithm::ES384) {
            return Err(bad("alg must be RS384 or ES384"));
        }
        // The issuer names the client; its keys then decide whether the rest is true.
        let unverified: serde_json::Value = jsonwebtoken::dangerous::insecure_decode(assertion)
            .map_err(|_| bad("the payload is not JSON"))?
            .claims;
        let Some(client_id) = unverified.get("iss").and_then(|v| v.as_str()) else {
            return Err(bad("iss (the client id) is required"));
        };
        let client = self
            .client(client_id)
            .await?
            .filter(|c| c.revoked_at.is_none() && c.kind == "ehr")
            .ok_or_else(|| bad("iss is not a registered EHR client"))?;
        let keys = self.client_keys(&client, header.kid.as_deref()).await?;
        let candidates: Vec<&jsonwebtoken::jwk::Jwk> = keys
            .keys
            .iter()
            .filter(|k| header.kid.is_none() || k.common.key_id == header.kid)
            .collect();
        if candidates.is_empty() {
            return Err(bad("no registered key matches the kid"));
        }
        let mut validation = Validation::new(header.alg);
        validation.set_audience(&[token_url]);
        validation.set_issuer(&[client_id]);
        validation.sub = Some(client_id.to_string());
        validation.set_required_spec_claims(&["exp", "iss", "sub", "aud"]);
        validation.leeway = LEEWAY_SECS;
        let mut last = None;
        let mut claims = None;
        for jwk in candidates {
            let Ok(key) = DecodingKey::from_jwk(jwk) else {
                continue;
            };
            match jsonwebtoken::decode::<AssertionClaims>(assertion, &key, &validation) {
                Ok(data) => {
                    claims = Some(data.claims);
                    break;
                }
                Err(e) => last = Some(e),
            }
        }
        let claims = claims.ok_or_else(|| {
            use jsonwebtoken::errors::ErrorKind;
            match last.as_ref().map(|e| e.kind()) {
                Some(ErrorKind::ExpiredSignature) => bad("expired (exp is in the past)"),
                Some(ErrorKind::InvalidAudience) => {
                    bad(&format!("aud must be the token URL {token_url}"))
                }
                Some(ErrorKind::InvalidIssuer) | Some(ErrorKind::InvalidSubject) => {
                    bad("iss and sub must both be the client id")
                }
                Some(ErrorKind::MissingRequiredClaim(c)) => bad(&format!("{c} is required")),
                _ => bad("the signature does not verify with the client's registered keys"),
            }
        })?;
        let now = now_secs();
        if claims.exp > now + TOKEN_TTL_SECS + LEEWAY_SECS {
            return Err(bad("exp must be at most 5 minutes ahead"));
        }
        let jti = claims
            .jti
            .filter(|j| !j.is_empty())
            .ok_or_else(|| bad("jti is required"))?;
        let fresh = self
            .store
            .claim_jti(
                client_id,
                &jti,
                (claims.exp + LEEWAY_SECS) as i64,
                now as i64,
            )
            .await?;
        if !fresh {
            return Err(bad("jti was already used (replayed assertion)"));
        }
        Ok(client)
    }

    /// The client's public keys: inline, or fetched from its JWKS URL and cached; a
    /// `kid` not in the cached set refetches once.
    async fn client_keys(
        &self,
        client: &ClientRow,
        kid: Option<&str>,
    ) -> Result<Arc<JwkSet>, AuthError> {
        if let Some(inline) = &client.jwks {
            return serde_json::from_str(inline).map(Arc::new).map_err(|_| {
                AuthError::InvalidClient("the client's registered JWKS is not valid".into())
            });
        }
        let Some(url) = &client.jwks_url else {
            return Err(AuthError::InvalidClient(
                "the client has no registered keys".into(),
            ));
        };
        if let Some((at, set)) = self.jwks.lock().expect("poisoned").get(url)
            && at.elapsed() < JWKS_TTL
            && kid.is_none_or(|k| set.find(k).is_some())
        {
            return Ok(set.clone());
        }
        let fetched: JwkSet = self
            .http
            .get(url)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|e| AuthError::InvalidClient(format!("cannot fetch the client's JWKS: {e}")))?
            .json()
            .await
            .map_err(|_| {
                AuthError::InvalidClient("the client's JWKS URL did not return a JWK Set".into())
            })?;
        let set = Arc::new(fetched);
        self.jwks
            .lock()
            .expect("poisoned")
            .insert(url.clone(), (Instant::now(), set.clone()));
        Ok(set)
    }

    /// The caller behind an `Authorization: Bearer …` value: an access token we issued,
    /// or a CBO API key. Also applies the per-client rate limit.
    pub async fn authenticate(&self, bearer: &str) -> Result<Principal, AuthError> {
        let principal = self.identify(bearer).await?;
        self.limiter.check(&principal.client_id).await?;
        Ok(principal)
    }

    /// Who a credential names, without counting the request against its rate: for the
    /// audit trail of a request refused before it was authenticated.
    pub async fn identify(&self, bearer: &str) -> Result<Principal, AuthError> {
        if bearer.starts_with("test_") || bearer.starts_with("live_") {
            self.api_key(bearer).await
        } else {
            self.access_token(bearer).await
        }
    }

    async fn access_token(&self, token: &str) -> Result<Principal, AuthError> {
        let now = now_secs();
        let cached = self.verified.lock().expect("poisoned").get(token).cloned();
        let principal = match cached {
            Some((exp, p)) if exp > now => p,
            _ => {
                let claims: AccessClaims =
                    self.keys.verify(token, TOKEN_AUDIENCE).ok_or_else(|| {
                        AuthError::Unauthenticated("the access token is invalid or expired".into())
                    })?;
                let p = Principal {
                    client_id: claims.sub,
                    kind: claims.kind,
                    organization: claims.org,
                    scopes: Scopes::parse(&claims.scope).unwrap_or_default(),
                    credential: Credential::AccessToken,
                };
                let mut verified = self.verified.lock().expect("poisoned");
                if verified.len() >= VERIFIED_CAPACITY {
                    verified.retain(|_, (exp, _)| *exp > now);
                    if verified.len() >= VERIFIED_CAPACITY {
                        verified.clear();
                    }
                }
                verified.insert(token.to_string(), (claims.exp, p.clone()));
                p
            }
        };
        self.live_client(&principal.client_id).await?;
        Ok(principal)
    }

    async fn live_client(&self, client_id: &str) -> Result<Arc<ClientRow>, AuthError> {
        self.client(client_id)
            .await?
            .filter(|c| c.revoked_at.is_none())
            .ok_or_else(|| {
                AuthError::Unauthenticated("the client of this credential is revoked".into())
            })
    }

    async fn api_key(&self, presented: &str) -> Result<Principal, AuthError> {
        let refused = || AuthError::Unauthenticated("the API key is invalid or revoked".into());
        let (mode, rest) = presented.split_at(4);
        let (key_id, secret) = rest[1..].split_once('_').ok_or_else(refused)?;
        if (mode == "live") != self.production {
            return Err(AuthError::Unauthenticated(format!(
                "{mode}_ keys are not accepted by a {} gateway",
                if self.production {
                    "production"
                } else {
                    "non-production"
                }
            )));
        }
        let row = self.store.api_key(key_id).await?.ok_or_else(refused)?;
        let digest = crate::hex(&Sha256::digest(secret.as_bytes()));
        if row.revoked_at.is_some()
            || row.mode != mode
            || aws_lc_rs::constant_time::verify_slices_are_equal(
                digest.as_bytes(),
                row.secret_sha256.as_bytes(),
            )
            .is_err()
        {
            return Err(refused());
        }
        let client = self.live_client(&row.client_id).await?;
        Ok(Principal {
            client_id: row.client_id,
            kind: ClientKind::Cbo,
            organization: client.organization_id.clone(),
            scopes: Scopes::parse(&row.scopes).unwrap_or_default(),
            credential: Credential::ApiKey,
        })
    }
}

pub(crate) fn random_token(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    aws_lc_rs::rand::fill(&mut buf).expect("the system RNG works");
    URL_SAFE_NO_PAD.encode(buf)
}
