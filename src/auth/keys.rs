//! The gateway's own signing key (ECDSA P-384, ES384): it signs the access tokens we
//! issue and, later, our client assertions to EHR servers. Generated on first start
//! under `<data dir>/keys/` (mode 0600), or loaded from a configured PEM file so that
//! replicas share one. `crossway keys rotate` keeps the previous key for verification
//! until the tokens it signed have expired.

use std::path::{Path, PathBuf};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P384_SHA384_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::AuthError;

const CURRENT: &str = "signing.pem";
const PREVIOUS: &str = "signing.previous.pem";

struct Key {
    kid: String,
    encoding: EncodingKey,
    decoding: DecodingKey,
    jwk: Value,
}

pub struct SigningKeys {
    current: Key,
    previous: Option<Key>,
}

fn key_error(path: &Path, why: impl std::fmt::Display) -> AuthError {
    AuthError::Key(format!("{}: {why}", path.display()))
}

/// PKCS#8 DER from a `-----BEGIN PRIVATE KEY-----` PEM document.
pub fn pem_to_der(pem: &str) -> Option<Vec<u8>> {
    let body: String = pem
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN PRIVATE KEY-----"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    STANDARD.decode(body.trim()).ok()
}

fn der_to_pem(der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut pem = String::from("-----BEGIN PRIVATE KEY-----\n");
    for line in b64.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        pem.push('\n');
    }
    pem.push_str("-----END PRIVATE KEY-----\n");
    pem
}

/// A new P-384 private key as PKCS#8 PEM.
pub fn generate_pem() -> Result<String, AuthError> {
    let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, &SystemRandom::new())
        .map_err(|_| AuthError::Key("cannot generate a P-384 key".into()))?;
    Ok(der_to_pem(doc.as_ref()))
}

/// The public JWK (with `kid`) of a P-384 private key in PKCS#8 PEM.
pub fn public_jwk(pem: &str) -> Option<Value> {
    let der = pem_to_der(pem)?;
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, &der).ok()?;
    // Uncompressed point: 0x04 ‖ x ‖ y, 48 bytes each on P-384.
    let point = pair.public_key().as_ref();
    let (x, y) = point.get(1..)?.split_at(48);
    let kid = URL_SAFE_NO_PAD.encode(&Sha256::digest(point)[..12]);
    Some(json!({
        "kty": "EC",
        "crv": "P-384",
        "x": URL_SAFE_NO_PAD.encode(x),
        "y": URL_SAFE_NO_PAD.encode(y),
        "kid": kid,
        "alg": "ES384",
        "use": "sig",
    }))
}

fn load(path: &Path) -> Result<Key, AuthError> {
    let pem = std::fs::read_to_string(path).map_err(|e| key_error(path, e))?;
    let der = pem_to_der(&pem).ok_or_else(|| key_error(path, "not a PKCS#8 PEM private key"))?;
    let jwk = public_jwk(&pem).ok_or_else(|| key_error(path, "not an ECDSA P-384 private key"))?;
    let decoding = DecodingKey::from_ec_components(
        jwk["x"].as_str().unwrap_or_default(),
        jwk["y"].as_str().unwrap_or_default(),
    )
    .map_err(|e| key_error(path, e))?;
    Ok(Key {
        kid: jwk["kid"].as_str().unwrap_or_default().to_string(),
        encoding: EncodingKey::from_ec_der(&der),
        decoding,
        jwk,
    })
}

/// Writes a file only its owner may read, atomically (no half-written key on a crash).
fn write_private(path: &Path, contents: &str) -> Result<(), AuthError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| key_error(&tmp, e))?;
    f.write_all(contents.as_bytes())
        .and_then(|_| f.sync_all())
        .map_err(|e| key_error(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| key_error(path, e))
}

fn key_dir(data_dir: &Path) -> Result<PathBuf, AuthError> {
    use std::os::unix::fs::DirBuilderExt;
    let dir = data_dir.join("keys");
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .map_err(|e| key_error(&dir, e))?;
    Ok(dir)
}

impl SigningKeys {
    /// The configured key file, or the one under the data dir (created when missing).
    pub fn load_or_create(data_dir: &Path, configured: &Path) -> Result<SigningKeys, AuthError> {
        if !configured.as_os_str().is_empty() {
            return Ok(SigningKeys {
                current: load(configured)?,
                previous: None,
            });
        }
        let dir = key_dir(data_dir)?;
        let current = dir.join(CURRENT);
        if !current.exists() {
            write_private(&current, &generate_pem()?)?;
            tracing::info!(message = "Generated the gateway's signing key.", path = %current.display());
        }
        let previous = dir.join(PREVIOUS);
        Ok(SigningKeys {
            current: load(&current)?,
            previous: if previous.exists() {
                Some(load(&previous)?)
            } else {
                None
            },
        })
    }

    /// Makes a new current key; the old one verifies what it signed until restart
    /// after the next rotation. Returns the new key id.
    pub fn rotate(data_dir: &Path) -> Result<String, AuthError> {
        let dir = key_dir(data_dir)?;
        let current = dir.join(CURRENT);
        if current.exists() {
            let old = std::fs::read_to_string(&current).map_err(|e| key_error(&current, e))?;
            write_private(&dir.join(PREVIOUS), &old)?;
        }
        write_private(&current, &generate_pem()?)?;
        Ok(load(&current)?.kid)
    }

    pub fn kid(&self) -> &str {
        &self.current.kid
    }

    pub fn sign<T: Serialize>(&self, claims: &T) -> Result<String, AuthError> {
        let mut header = Header::new(Algorithm::ES384);
        header.kid = Some(self.current.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.current.encoding)
            .map_err(|e| AuthError::Key(format!("cannot sign: {e}")))
    }

    /// Verifies a token we issued: our key (by `kid`), ES384, not expired, our audience.
    pub fn verify<T: DeserializeOwned>(&self, token: &str, audience: &str) -> Option<T> {
        let header = jsonwebtoken::decode_header(token).ok()?;
        if header.alg != Algorithm::ES384 {
            return None;
        }
        let key = [Some(&self.current), self.previous.as_ref()]
            .into_iter()
            .flatten()
            .find(|k| header.kid.as_deref() == Some(k.kid.as_str()))?;
        let mut validation = jsonwebtoken::Validation::new(Algorithm::ES384);
        validation.set_audience(&[audience]);
        validation.leeway = 0;
        jsonwebtoken::decode::<T>(token, &key.decoding, &validation)
            .ok()
            .map(|d| d.claims)
    }

    /// Our public keys, for `/.well-known/jwks.json`.
    pub fn jwks(&self) -> Value {
        let keys: Vec<&Value> = [Some(&self.current), self.previous.as_ref()]
            .into_iter()
            .flatten()
            .map(|k| &k.jwk)
            .collect();
        json!({ "keys": keys })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_key_is_private_and_survives_restart_and_rotation() {
        let dir = std::env::temp_dir().join(format!("cw-keys-{}", uuid::Uuid::new_v4()));
        let keys = SigningKeys::load_or_create(&dir, Path::new("")).unwrap();
        let mode = std::fs::metadata(dir.join("keys").join(CURRENT))
            .unwrap()
            .permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );
        let claims = json!({"aud": "a", "exp": jsonwebtoken::get_current_timestamp() + 60});
        let token = keys.sign(&claims).unwrap();
        let again = SigningKeys::load_or_create(&dir, Path::new("")).unwrap();
        assert_eq!(again.kid(), keys.kid());
        assert!(again.verify::<Value>(&token, "a").is_some());
        assert!(again.verify::<Value>(&token, "b").is_none());

        let new_kid = SigningKeys::rotate(&dir).unwrap();
        let rotated = SigningKeys::load_or_create(&dir, Path::new("")).unwrap();
        assert_eq!(rotated.kid(), new_kid);
        assert!(
            rotated.verify::<Value>(&token, "a").is_some(),
            "old tokens still verify"
        );
        assert_eq!(rotated.jwks()["keys"].as_array().unwrap().len(), 2);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
