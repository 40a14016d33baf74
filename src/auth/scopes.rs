//! Scopes: SMART `system/…` scopes (v2 `cruds`, v1 `read`/`write`/`*`) for the FHIR
//! face, and the CBO face's four named scopes.

use std::fmt;

/// A FHIR interaction, as SMART v2 permissions name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interaction {
    Create,
    Read,
    Update,
    Delete,
    Search,
}

impl Interaction {
    fn bit(self) -> u8 {
        match self {
            Interaction::Create => 1,
            Interaction::Read => 2,
            Interaction::Update => 4,
            Interaction::Delete => 8,
            Interaction::Search => 16,
        }
    }

    pub fn letter(self) -> char {
        match self {
            Interaction::Create => 'c',
            Interaction::Read => 'r',
            Interaction::Update => 'u',
            Interaction::Delete => 'd',
            Interaction::Search => 's',
        }
    }
}

/// What a CBO credential may do on `/cbo/v1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CboScope {
    ReferralsRead,
    ReferralsWrite,
    WebhooksManage,
    DirectoryWrite,
}

impl CboScope {
    pub const ALL: [CboScope; 4] = [
        CboScope::ReferralsRead,
        CboScope::ReferralsWrite,
        CboScope::WebhooksManage,
        CboScope::DirectoryWrite,
    ];

    pub fn name(self) -> &'static str {
        match self {
            CboScope::ReferralsRead => "referrals:read",
            CboScope::ReferralsWrite => "referrals:write",
            CboScope::WebhooksManage => "webhooks:manage",
            CboScope::DirectoryWrite => "directory:write",
        }
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

/// One scope token, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    /// `system/{type or *}.{perms}`: `perms` is a bit set of [`Interaction`]s.
    Smart {
        resource: String,
        perms: u8,
    },
    Cbo(CboScope),
}

/// A set of granted scopes, kept with their original spelling for the token response.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scopes {
    tokens: Vec<(String, Token)>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("scope {token:?}: {rule}")]
pub struct ScopeError {
    pub token: String,
    pub rule: String,
}

const ALL_PERMS: u8 = 31;

fn parse_token(raw: &str) -> Result<Token, ScopeError> {
    let err = |rule: &str| ScopeError {
        token: raw.to_string(),
        rule: rule.to_string(),
    };
    if let Some(cbo) = CboScope::ALL.into_iter().find(|s| s.name() == raw) {
        return Ok(Token::Cbo(cbo));
    }
    let Some(rest) = raw.strip_prefix("system/") else {
        return Err(err(
            "expected system/<Type>.<permissions> (SMART) or one of referrals:read, referrals:write, webhooks:manage, directory:write",
        ));
    };
    if rest.contains('?') {
        return Err(err("scopes with query parameters are not supported"));
    }
    let Some((resource, perms)) = rest.rsplit_once('.') else {
        return Err(err("expected <Type>.<permissions> after system/"));
    };
    if resource != "*"
        && (resource.is_empty() || !resource.chars().all(|c| c.is_ascii_alphanumeric()))
    {
        return Err(err("the resource type must be a FHIR type name or *"));
    }
    let bits = match perms {
        "read" => Interaction::Read.bit() | Interaction::Search.bit(),
        "write" => {
            Interaction::Create.bit() | Interaction::Update.bit() | Interaction::Delete.bit()
        }
        "*" => ALL_PERMS,
        v2 => {
            // SMART v2: a non-empty subsequence of "cruds", in that order.
            let mut bits = 0;
            let mut rest = "cruds";
            for c in v2.chars() {
                let Some(at) = rest.find(c) else {
                    return Err(err(
                        "permissions must be read, write, * or letters of cruds in that order",
                    ));
                };
                rest = &rest[at + 1..];
                bits |= match c {
                    'c' => Interaction::Create.bit(),
                    'r' => Interaction::Read.bit(),
                    'u' => Interaction::Update.bit(),
                    'd' => Interaction::Delete.bit(),
                    _ => Interaction::Search.bit(),
                };
            }
            if bits == 0 {
                return Err(err("permissions are empty"));
            }
            bits
        }
    };
    Ok(Token::Smart {
        resource: resource.to_string(),
        perms: bits,
    })
}

/// Types only an operator's scope reaches: a wildcard (`system/*.…`) never covers
/// them, so no default scope set can read who did what on the gateway. A client that
/// audits is registered with `system/AuditEvent.rs` by name.
pub const OPERATOR_ONLY: &[&str] = &["AuditEvent"];

/// Does a scope on `granted` (a type or `*`) reach `wanted` (a type or `*`)?
fn covers(granted: &str, wanted: &str) -> bool {
    granted == wanted || (granted == "*" && !OPERATOR_ONLY.contains(&wanted))
}

/// The types both an asked scope and a registered one reach: the narrower of the two,
/// if either covers the other.
fn meet<'a>(asked: &'a str, registered: &'a str) -> Option<&'a str> {
    if covers(registered, asked) {
        Some(asked)
    } else if asked == "*" {
        // The registration names this type, operator-only ones included.
        Some(registered)
    } else {
        None
    }
}

/// SMART v2 letters of a permission bit set, in `cruds` order.
fn letters(bits: u8) -> String {
    [
        Interaction::Create,
        Interaction::Read,
        Interaction::Update,
        Interaction::Delete,
        Interaction::Search,
    ]
    .into_iter()
    .filter(|i| bits & i.bit() != 0)
    .map(Interaction::letter)
    .collect()
}

impl Scopes {
    /// Parses a space-separated scope string; an unknown token is an error naming it.
    pub fn parse(s: &str) -> Result<Scopes, ScopeError> {
        let mut tokens = Vec::new();
        for raw in s.split_ascii_whitespace() {
            let token = parse_token(raw)?;
            if !tokens.iter().any(|(r, _)| r == raw) {
                tokens.push((raw.to_string(), token));
            }
        }
        Ok(Scopes { tokens })
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// May this credential perform `interaction` on `resource_type`?
    pub fn allows(&self, resource_type: &str, interaction: Interaction) -> bool {
        self.tokens.iter().any(|(_, t)| match t {
            Token::Smart { resource, perms } => {
                covers(resource, resource_type) && perms & interaction.bit() != 0
            }
            Token::Cbo(_) => false,
        })
    }

    /// Whether a scope names `resource_type` itself (not by `*`) with `interaction`:
    /// for what a wildcard must not reach, such as exact small counts.
    pub fn names(&self, resource_type: &str, interaction: Interaction) -> bool {
        self.tokens.iter().any(|(_, t)| match t {
            Token::Smart { resource, perms } => {
                resource == resource_type && perms & interaction.bit() != 0
            }
            Token::Cbo(_) => false,
        })
    }

    pub fn has(&self, scope: CboScope) -> bool {
        self.cbo_bits() & scope.bit() != 0
    }

    fn cbo_bits(&self) -> u8 {
        self.tokens.iter().fold(0, |acc, (_, t)| match t {
            Token::Cbo(s) => acc | s.bit(),
            Token::Smart { .. } => acc,
        })
    }

    /// What a client asks for at the token endpoint. Tokens this server does not know
    /// (`launch/patient`, `openid`, `fhirUser`, a typo) are left out, not an error: the
    /// server may grant fewer scopes than asked (RFC 6749 §3.3, SMART), and says so in
    /// the response's `scope`.
    pub fn parse_request(s: &str) -> Scopes {
        let mut tokens: Vec<(String, Token)> = Vec::new();
        for raw in s.split_ascii_whitespace() {
            if let Ok(token) = parse_token(raw)
                && !tokens.iter().any(|(r, _)| r == raw)
            {
                tokens.push((raw.to_string(), token));
            }
        }
        Scopes { tokens }
    }

    /// The part of the requested scopes this registration allows. A token the
    /// registration covers is granted as asked; one that asks for more (`system/*.*`
    /// from a client registered for `system/Task.rs`) is granted only what each
    /// registered scope allows of it, spelled as SMART v2 (`system/Task.rs`). A
    /// wildcard never reaches [`OPERATOR_ONLY`] types unless the registration names them.
    pub fn grant(&self, requested: &Scopes) -> Scopes {
        let mut tokens: Vec<(String, Token)> = Vec::new();
        let mut push = |raw: String, token: Token| {
            if !tokens.iter().any(|(r, _)| *r == raw) {
                tokens.push((raw, token));
            }
        };
        for (raw, token) in &requested.tokens {
            match token {
                Token::Cbo(s) if self.has(*s) => push(raw.clone(), token.clone()),
                Token::Cbo(_) => {}
                Token::Smart { resource, perms } => {
                    let mut covered = 0;
                    for (_, mine) in &self.tokens {
                        if let Token::Smart {
                            resource: r,
                            perms: p,
                        } = mine
                            && covers(r, resource)
                        {
                            covered |= p;
                        }
                    }
                    if perms & !covered == 0 {
                        push(raw.clone(), token.clone());
                        continue;
                    }
                    for (_, mine) in &self.tokens {
                        if let Token::Smart {
                            resource: r,
                            perms: p,
                        } = mine
                            && let Some(both) = meet(resource, r)
                            && perms & p != 0
                        {
                            let bits = perms & p;
                            push(
                                format!("system/{both}.{}", letters(bits)),
                                Token::Smart {
                                    resource: both.to_string(),
                                    perms: bits,
                                },
                            );
                        }
                    }
                }
            }
        }
        Scopes { tokens }
    }

    /// True when every token is a SMART scope (EHR clients) or every one a CBO scope.
    pub fn only_smart(&self) -> bool {
        self.tokens
            .iter()
            .all(|(_, t)| matches!(t, Token::Smart { .. }))
    }

    pub fn only_cbo(&self) -> bool {
        self.tokens.iter().all(|(_, t)| matches!(t, Token::Cbo(_)))
    }
}

impl fmt::Display for Scopes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (raw, _)) in self.tokens.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            f.write_str(raw)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smart_v2_and_v1_scopes_permit_what_they_name() {
        let s = Scopes::parse("system/Task.cruds system/Patient.rs system/Encounter.read").unwrap();
        assert!(s.allows("Task", Interaction::Delete));
        assert!(s.allows("Patient", Interaction::Search));
        assert!(!s.allows("Patient", Interaction::Update));
        assert!(s.allows("Encounter", Interaction::Read));
        assert!(!s.allows("Encounter", Interaction::Create));
        assert!(!s.allows("ServiceRequest", Interaction::Read));
        let all = Scopes::parse("system/*.*").unwrap();
        assert!(all.allows("Consent", Interaction::Update));
        let write = Scopes::parse("system/Task.write").unwrap();
        assert!(write.allows("Task", Interaction::Create));
        assert!(!write.allows("Task", Interaction::Read));
    }

    #[test]
    fn malformed_scopes_are_refused_by_name() {
        for bad in [
            "system/Task.urc",
            "system/Task.",
            "system/Task.x",
            "user/Task.read",
            "patient/*.rs",
            "system/Task.rs?status=ready",
            "system/.rs",
            "referrals:delete",
        ] {
            let e = Scopes::parse(&format!("system/Patient.r {bad}")).unwrap_err();
            assert_eq!(e.token, bad);
        }
    }

    #[test]
    fn a_grant_never_exceeds_the_registration() {
        let registered = Scopes::parse("system/Task.rs system/Patient.r referrals:read").unwrap();
        let asked = Scopes::parse(
            "system/Task.r system/Task.cruds system/*.r referrals:read referrals:write",
        )
        .unwrap();
        // What is covered is granted as asked; what asks for more is cut down to what
        // each registered scope allows of it.
        assert_eq!(
            registered.grant(&asked).to_string(),
            "system/Task.r system/Task.rs system/Patient.r referrals:read"
        );
        let wide = Scopes::parse("system/*.rs").unwrap();
        assert_eq!(
            wide.grant(&Scopes::parse("system/Consent.read").unwrap())
                .to_string(),
            "system/Consent.read"
        );
    }

    #[test]
    fn a_request_is_granted_what_it_may_have_and_the_rest_dropped() {
        let asked = Scopes::parse_request(
            "launch/patient openid fhirUser system/Task.rs system/*.cruds user/*.read",
        );
        assert_eq!(asked.to_string(), "system/Task.rs system/*.cruds");
        let registered = Scopes::parse("system/Task.rs system/Patient.r").unwrap();
        assert_eq!(
            registered.grant(&asked).to_string(),
            "system/Task.rs system/Patient.r"
        );
        // The audit trail only by name: no wildcard reaches it, on either side.
        let wide = Scopes::parse("system/*.cruds").unwrap();
        assert!(
            wide.grant(&Scopes::parse_request("system/AuditEvent.rs"))
                .is_empty()
        );
        let auditor = Scopes::parse("system/AuditEvent.rs").unwrap();
        assert_eq!(
            auditor
                .grant(&Scopes::parse_request("system/*.read"))
                .to_string(),
            "system/AuditEvent.rs"
        );
        assert!(
            registered
                .grant(&Scopes::parse_request("launch/patient openid"))
                .is_empty()
        );
    }

    #[test]
    fn cbo_scopes_are_separate_from_smart_ones() {
        let s = Scopes::parse("referrals:read webhooks:manage").unwrap();
        assert!(s.has(CboScope::ReferralsRead));
        assert!(!s.has(CboScope::ReferralsWrite));
        assert!(!s.allows("Task", Interaction::Read));
        assert!(s.only_cbo() && !s.only_smart());
    }
}
