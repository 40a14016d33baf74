//! The HSDS 3.0 API's reads (the paths of Open Referral's `schema/openapi.json`):
//! one entity as stored, and pages of a kind in the list views the document names
//! (`compiled/service_list.json`: a service's one-to-one fields with its organization
//! and program; `organization_list`: one-to-one fields; `service_at_location_list`: the
//! link with its location and service, one-to-one fields each). `full=true` pages
//! whole entities.
//!
//! Query parameters are read tolerantly, as the document declares no error answer:
//! a page number below 1 is 1, `per_page` is kept within 1..=[`MAX_PER_PAGE`], a
//! parameter we do not implement (`postcode`, `proximity`, `format=ndjson`, …) is
//! ignored, and the answer is always JSON.
//!
//! One extension (the document allows parameters it does not list):
//! `sdoh_domain=<code>` on `/services` and `/service_at_locations` keeps the services
//! with a taxonomy term that means that SDOH domain ([`needs`](super::needs)): a term
//! in the service's `attributes` (inline, or the stored term its `taxonomy_term_id`
//! names), or an ancestor of one (`parent_id`, stored terms); a service-at-location
//! by its own terms or its service's (nested, else the stored one its `service_id`
//! names). A domain without a rule
//! is the one error of this API ([`DirectoryError::UnknownDomain`]). It reads every
//! service the other filters leave and every stored term, per request: right for a
//! county's directory, not yet for the 100,000-service benchmark (that wants the
//! domains indexed at import).

use serde_json::{Map, Value, json};

use std::collections::HashMap;

use super::needs::Needs;
use super::{DirectoryError, Kind};
use crate::store::{DirectoryFilter, Store};

pub const DEFAULT_PER_PAGE: i64 = 50;
pub const MAX_PER_PAGE: i64 = 1000;

/// Where the official OpenAPI document of the API we serve is.
pub const OPENAPI_URL: &str =
    "https://raw.githubusercontent.com/openreferral/specification/3.0/schema/openapi.json";

/// `GET /`: which HSDS this is.
pub fn root() -> Value {
    json!({"version": "3.0", "openapi_url": OPENAPI_URL})
}

/// A list request, read from its query parameters.
#[derive(Debug, Default, Clone)]
pub struct PageQuery {
    pub page: i64,
    pub per_page: i64,
    pub full: bool,
    pub filter: DirectoryFilter,
    /// `sdoh_domain=`: services whose taxonomy terms mean this SDOH domain.
    pub sdoh_domain: Option<String>,
}

impl PageQuery {
    pub fn parse(params: &[(String, String)]) -> PageQuery {
        let get = |name: &str| {
            params
                .iter()
                .rev()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.trim())
                .filter(|v| !v.is_empty())
        };
        let number = |name: &str| get(name).and_then(|v| v.parse::<i64>().ok());
        let flag = |name: &str| get(name).is_some_and(|v| v.eq_ignore_ascii_case("true"));
        let string = |name: &str| get(name).map(str::to_string);
        PageQuery {
            page: number("page").unwrap_or(1).max(1),
            per_page: number("per_page")
                .unwrap_or(DEFAULT_PER_PAGE)
                .clamp(1, MAX_PER_PAGE),
            full: flag("full"),
            filter: DirectoryFilter {
                search: get("search").map(str::to_lowercase),
                organization_id: string("organization_id"),
                taxonomy_term_id: string("taxonomy_term_id"),
                taxonomy_id: string("taxonomy_id"),
                parent_id: string("parent_id"),
                top_only: flag("top_only"),
                modified_after: string("modified_after"),
            },
            sdoh_domain: string("sdoh_domain"),
        }
    }
}

/// One entity's JSON exactly as stored.
pub async fn get(
    store: &Store,
    tenant: &str,
    kind: Kind,
    id: &str,
) -> Result<Option<String>, DirectoryError> {
    Ok(store.directory_get(tenant, kind.as_str(), id).await?)
}

/// A page of `kind`: the paging fields of the document's `Page` and `contents`.
pub async fn list(
    store: &Store,
    tenant: &str,
    kind: Kind,
    q: &PageQuery,
    needs: &Needs,
) -> Result<Value, DirectoryError> {
    let offset = (q.page - 1).saturating_mul(q.per_page);
    let (total, bodies) = match (&q.sdoh_domain, kind) {
        (Some(domain), Kind::Service | Kind::ServiceAtLocation) => {
            if !needs.knows(domain) {
                return Err(DirectoryError::UnknownDomain {
                    domain: domain.clone(),
                    known: needs.domains().collect::<Vec<_>>().join(", "),
                });
            }
            by_need(store, tenant, kind, q, needs, domain, offset).await?
        }
        _ => {
            store
                .directory_page(tenant, kind.as_str(), &q.filter, offset, q.per_page)
                .await?
        }
    };
    let contents: Vec<Value> = bodies
        .iter()
        .filter_map(|b| serde_json::from_str::<Value>(b).ok())
        .map(|v| if q.full { v } else { list_view(kind, v) })
        .collect();
    let total_pages = (total + q.per_page - 1) / q.per_page;
    Ok(json!({
        "total_items": total,
        "total_pages": total_pages,
        "page_number": q.page,
        "size": contents.len(),
        "first_page": q.page == 1,
        "last_page": q.page >= total_pages,
        "empty": contents.is_empty(),
        "contents": contents,
    }))
}

/// Rows read per query while scanning.
const SCAN: i64 = 500;

/// How many of the services (or services-at-locations) the filters leave mean
/// `domain`, and the bodies of the page from `offset`, in id order.
async fn by_need(
    store: &Store,
    tenant: &str,
    kind: Kind,
    q: &PageQuery,
    needs: &Needs,
    domain: &str,
    offset: i64,
) -> Result<(i64, Vec<String>), DirectoryError> {
    let mut terms: HashMap<String, Value> = HashMap::new();
    let everything = DirectoryFilter::default();
    for start in (0..).step_by(SCAN as usize) {
        let (total, page) = store
            .directory_page(
                tenant,
                Kind::TaxonomyTerm.as_str(),
                &everything,
                start,
                SCAN,
            )
            .await?;
        for body in page {
            if let Ok(term) = serde_json::from_str::<Value>(&body)
                && let Some(id) = term.get("id").and_then(Value::as_str)
            {
                terms.insert(id.to_string(), term);
            }
        }
        if start + SCAN >= total {
            break;
        }
    }
    let (mut matched, mut page) = (0i64, Vec::new());
    for start in (0..).step_by(SCAN as usize) {
        let (total, bodies) = store
            .directory_page(tenant, kind.as_str(), &q.filter, start, SCAN)
            .await?;
        for body in bodies {
            let Ok(v) = serde_json::from_str::<Value>(&body) else {
                continue;
            };
            let hit = match kind {
                // Its own terms, its nested service's, or (when it only names its
                // service) the stored service's.
                Kind::ServiceAtLocation => {
                    serves(needs, domain, &v, &terms)
                        || match v.get("service").filter(|s| s.get("attributes").is_some()) {
                            Some(service) => serves(needs, domain, service, &terms),
                            None => match v.get("service_id").and_then(Value::as_str) {
                                Some(id) => store
                                    .directory_get(tenant, Kind::Service.as_str(), id)
                                    .await?
                                    .and_then(|b| serde_json::from_str::<Value>(&b).ok())
                                    .is_some_and(|s| serves(needs, domain, &s, &terms)),
                                None => false,
                            },
                        }
                }
                _ => serves(needs, domain, &v, &terms),
            };
            if hit {
                if matched >= offset && (page.len() as i64) < q.per_page {
                    page.push(body);
                }
                matched += 1;
            }
        }
        if start + SCAN >= total {
            break;
        }
    }
    Ok((matched, page))
}

/// Whether one of `service`'s taxonomy terms, or an ancestor of one, means `domain`.
pub fn serves(
    needs: &Needs,
    domain: &str,
    service: &Value,
    terms: &HashMap<String, Value>,
) -> bool {
    let attributes = service
        .get("attributes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten();
    for a in attributes {
        let inline = a.get("taxonomy_term").filter(|t| t.is_object());
        let id = inline
            .and_then(|t| t.get("id"))
            .or_else(|| a.get("taxonomy_term_id"))
            .and_then(Value::as_str);
        let mut term = inline.or_else(|| id.and_then(|id| terms.get(id)));
        // Up the tree; the depth bound keeps a parent_id cycle from looping.
        for _ in 0..16 {
            let Some(t) = term else { break };
            if needs.term_matches(domain, t) {
                return true;
            }
            term = t
                .get("parent_id")
                .and_then(Value::as_str)
                .and_then(|p| terms.get(p));
        }
    }
    false
}

/// An entity as a list shows it.
pub fn list_view(kind: Kind, body: Value) -> Value {
    match kind {
        Kind::Service => one_to_one(body, &["organization", "program"]),
        Kind::ServiceAtLocation => one_to_one(body, &["location", "service"]),
        Kind::Organization | Kind::Location => one_to_one(body, &[]),
        Kind::Taxonomy | Kind::TaxonomyTerm => body,
    }
}

/// The fields that are not arrays or objects, and the named objects (their own
/// one-to-one fields).
fn one_to_one(body: Value, objects: &[&str]) -> Value {
    let Value::Object(o) = body else {
        return body;
    };
    let mut out = Map::new();
    for (k, v) in o {
        match v {
            Value::Array(_) => {}
            Value::Object(_) if objects.contains(&k.as_str()) => {
                out.insert(k, one_to_one(v, &[]));
            }
            Value::Object(_) => {}
            v => {
                out.insert(k, v);
            }
        }
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> PageQuery {
        PageQuery::parse(
            &pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<Vec<_>>(),
        )
    }

    #[test]
    fn paging_parameters_are_read_tolerantly() {
        let p = q(&[("page", "-3"), ("per_page", "0")]);
        assert_eq!((p.page, p.per_page), (1, 1));
        let p = q(&[("page", "x"), ("per_page", "99999999999999999999")]);
        assert_eq!((p.page, p.per_page), (1, DEFAULT_PER_PAGE));
        let p = q(&[("per_page", "5000"), ("search", "Food"), ("full", "true")]);
        assert_eq!(p.per_page, MAX_PER_PAGE);
        assert_eq!(p.filter.search.as_deref(), Some("food"));
        assert!(p.full);
    }

    #[test]
    fn a_service_in_a_list_keeps_its_one_to_one_fields() {
        let v = list_view(
            Kind::Service,
            json!({"id": "s", "phones": [{"id": "p"}],
                   "organization": {"id": "o", "locations": [{"id": "l"}]},
                   "program": {"id": "p"}, "x": {"y": 1}}),
        );
        assert_eq!(
            v,
            json!({"id": "s", "organization": {"id": "o"}, "program": {"id": "p"}})
        );
    }
}
