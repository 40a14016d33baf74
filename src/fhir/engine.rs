//! FHIR interactions against the store: create, conditional create, update, read,
//! vread, history, search, and transaction/batch Bundles.
//!
//! Pure checks (parsing, profile rules, Bundle planning) run on the caller's thread;
//! what needs the store (versions, references that must resolve, conditional matches,
//! referral routing) runs inside the group-commit writer, so each request sees the
//! effects of every request committed before it.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::Value;

use super::bundle::{self, BundleKind, EntryRequest, EntryResult, Plan};
use super::datetime;
pub use super::ingest::{Inbound, Ingested};
use super::reference::{self, Target};
use super::search::{self, SearchQuery};
use super::validate::{self, ReferenceCheck};
use super::{FhirError, Issue, IssueCode};
use crate::identity::cache::IdentityCache;
use crate::referral::action::{self, Action, ActionError, Actor};
use crate::referral::projection::Fetch;
use crate::referral::tenants::Tenants;
use crate::referral::{CboStatus, Related, projection};
use crate::store::writer::{BoxFuture, Command, Isolation, Writer};
use crate::store::{Preload, Referral, Store, StoreError, StoredResource, Tx};

/// Who hears of new versions: the live FHIR Subscriptions (`subscription::Registry`).
/// A trait, so that the engine names no delivery module.
pub trait Watchers: Send + Sync + std::fmt::Debug {
    /// The subscriptions `resource`, a new version written at `now`, is an event of.
    fn matching(&self, resource: &Value, now: i64) -> Vec<String>;
}

/// Nobody listens (operator commands, which never write subscribed resources' events).
#[derive(Debug)]
struct NoWatchers;

impl Watchers for NoWatchers {
    fn matching(&self, _: &Value, _: i64) -> Vec<String> {
        Vec::new()
    }
}

/// What the engine needs to know about this deployment.
#[derive(Debug)]
pub struct Context {
    /// Our public `/fhir` base, when configured: absolute references to it are local.
    pub own_base: Option<String>,
    pub organizations: Tenants,
    /// The mappings in force: how Patient identifiers become person identifiers.
    pub mappings: crate::mapping::Live,
    /// The live FHIR Subscriptions: a Task or ServiceRequest version matching one is an
    /// event of it, numbered in the same transaction.
    pub subscriptions: Arc<dyn Watchers>,
}

impl Default for Context {
    fn default() -> Context {
        Context {
            own_base: None,
            organizations: Tenants::default(),
            mappings: crate::mapping::Live::default(),
            subscriptions: Arc::new(NoWatchers),
        }
    }
}

/// The result of a create or update.
#[derive(Debug)]
pub struct Written {
    pub stored: StoredResource,
    /// 201 for a new resource, 200 for a new version, a no-op update or a conditional
    /// create that matched an existing resource.
    pub status: u16,
    pub warnings: Vec<Issue>,
}

/// A CBO action on a referral, as the CBO face submits it.
#[derive(Debug)]
pub struct ActionRequest {
    pub organization: String,
    pub organization_name: String,
    pub referral_id: String,
    pub action: Action,
    /// The referral version the caller last saw (`If-Match`).
    pub if_match: Option<i64>,
    pub idempotency: Option<IdempotencyKey>,
    /// Projection paths this organisation may not see (its visibility rules).
    pub omit: Vec<String>,
    /// Resources around the Task, read before submitting; what is missing is read
    /// inside the transaction.
    pub related: Related,
    /// The Task's id when known, so the writer reads it with the rest of its batch.
    pub task_hint: Option<String>,
}

#[derive(Debug, Clone)]
pub struct IdempotencyKey {
    pub key: String,
    /// A digest of the request, so a reused key with another payload is recognised.
    pub fingerprint: String,
}

/// The answer to an action: the referral (or the note) as the CBO sees it.
#[derive(Debug)]
pub struct ActionDone {
    pub status: u16,
    pub body: String,
    /// The answer first given to this Idempotency-Key, not a new effect.
    pub replayed: bool,
}

/// Why an action changed nothing.
#[derive(Debug)]
pub enum Refusal {
    NotFound,
    VersionConflict { current: i64 },
    Transition(ActionError),
    IdempotencyKeyReused,
}

#[derive(Clone)]
pub struct Fhir {
    store: Store,
    writer: Writer<WriteCommand>,
    ctx: Arc<Context>,
    /// Cached identifier → person answers, dropped after a write that moved
    /// identifiers between persons, whatever face the write came through.
    identities: Arc<IdentityCache>,
}

impl Fhir {
    /// Starts the writer on the current tokio runtime.
    pub fn new(store: Store, ctx: Context, identities: Arc<IdentityCache>) -> Fhir {
        let writer = Writer::spawn(&store);
        Fhir {
            store,
            writer,
            ctx: Arc::new(ctx),
            identities,
        }
    }

    /// Writes waiting for the group-commit writer (a gauge on `/metrics`).
    pub fn queued_writes(&self) -> usize {
        self.writer.queued()
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The mappings in force (one snapshot).
    pub fn mappings(&self) -> std::sync::Arc<crate::mapping::Mappings> {
        self.ctx.mappings.current()
    }

    /// `caller` as for [`Fhir::update`]: an organisation-bound client's creates are
    /// checked by the write rules and remembered as its organisation's.
    pub async fn create(
        &self,
        resource_type: &str,
        mut resource: Value,
        if_none_exist: Option<&str>,
        caller: Option<&str>,
    ) -> Result<Written, FhirError> {
        check_type(resource_type)?;
        let checked = validate::validate(resource_type, &resource, None)?;
        validate::normalize(resource_type, &mut resource);
        let if_none_exist = match if_none_exist {
            Some(q) => Some(conditional_query(resource_type, q, "If-None-Exist")?),
            None => None,
        };
        let id = super::new_id();
        let prepared = Box::new(Prepared::new(resource_type, &resource, &id, 1, &self.ctx));
        let write = Write::Create {
            resource_type: resource_type.to_string(),
            id,
            resource,
            prepared,
            if_none_exist,
            must_resolve: checked.must_resolve,
            warnings: checked.warnings,
            caller: caller.map(str::to_string),
        };
        match self.submit(write).await? {
            Outcome::Written(w) => Ok(w),
            _ => unreachable!("a create yields one resource"),
        }
    }

    /// `caller` is the organisation the client is bound to: on a Task it decides
    /// whether the caller is the requester or the owner (fhir.md). `None` is a client
    /// bound to no organisation, or the gateway itself.
    pub async fn update(
        &self,
        resource_type: &str,
        id: &str,
        mut resource: Value,
        if_match: Option<&str>,
        caller: Option<&str>,
    ) -> Result<Written, FhirError> {
        check_type(resource_type)?;
        if !super::is_valid_id(id) {
            return Err(FhirError::invalid(
                format!("{resource_type}.id"),
                format!("{id:?} is not a valid id"),
            ));
        }
        let if_match = if_match.map(parse_etag).transpose()?;
        let checked = validate::validate(resource_type, &resource, Some(id))?;
        validate::normalize(resource_type, &mut resource);
        let write = Write::Update {
            resource_type: resource_type.to_string(),
            id: id.to_string(),
            resource,
            if_match,
            condition: None,
            must_resolve: checked.must_resolve,
            warnings: checked.warnings,
            caller: caller.map(str::to_string),
        };
        match self.submit(write).await? {
            Outcome::Written(w) => Ok(w),
            _ => unreachable!("an update yields one resource"),
        }
    }

    /// Conditional update (`PUT Type?search`): no match creates (with the body's id if
    /// it has one not in use, else a server id), one match is updated (the body's id,
    /// if any, must be that match's), more than one is 412.
    pub async fn conditional_update(
        &self,
        resource_type: &str,
        query: &str,
        mut resource: Value,
        if_match: Option<&str>,
        caller: Option<&str>,
    ) -> Result<Written, FhirError> {
        check_type(resource_type)?;
        let condition = update_condition(resource_type, query)?;
        let if_match = if_match.map(parse_etag).transpose()?;
        let checked = validate::validate(resource_type, &resource, None)?;
        validate::normalize(resource_type, &mut resource);
        let id = match resource.get("id").and_then(Value::as_str) {
            Some(id) => id.to_string(),
            None => super::new_id(),
        };
        let write = Write::Update {
            resource_type: resource_type.to_string(),
            id,
            resource,
            if_match,
            condition: Some(condition),
            must_resolve: checked.must_resolve,
            warnings: checked.warnings,
            caller: caller.map(str::to_string),
        };
        match self.submit(write).await? {
            Outcome::Written(w) => Ok(w),
            _ => unreachable!("an update yields one resource"),
        }
    }

    /// Runs a transaction or batch Bundle; returns the response Bundle's JSON.
    pub async fn bundle(
        &self,
        body: Value,
        base: &str,
        with_resources: bool,
        caller: Option<&str>,
    ) -> Result<String, FhirError> {
        let plan = bundle::plan(body, self.ctx.own_base.as_deref())?;
        // New resources are serialised and indexed here, in parallel with other requests;
        // the writer redoes it only for entries whose references it has to rewrite.
        let prepared = plan
            .entries
            .iter()
            .map(|e| match (&e.request, &e.resource, &e.error) {
                (EntryRequest::Create { id, .. }, Some(r), None) => {
                    Some(Prepared::new(&e.resource_type, r, id, 1, &self.ctx))
                }
                _ => None,
            })
            .collect();
        let write = Write::Bundle {
            plan,
            caller: caller.map(str::to_string),
            prepared,
            base: base.to_string(),
            with_resources,
        };
        match self.submit(write).await? {
            Outcome::Bundle(b) => Ok(b),
            _ => unreachable!("a Bundle yields a Bundle"),
        }
    }

    /// Applies a CBO action in one transaction: the Task update, what the action
    /// creates, the referral's new state, its events and the idempotency record.
    pub async fn act(
        &self,
        request: ActionRequest,
    ) -> Result<Result<ActionDone, Refusal>, FhirError> {
        match self.submit(Write::Action(Box::new(request))).await? {
            Outcome::Action(done) => Ok(done.map(Acted::answer)),
            _ => unreachable!("an action yields an action outcome"),
        }
    }

    /// Applies (or only records) a feed message in one transaction with its raw text.
    pub async fn ingest(&self, inbound: Inbound) -> Result<Ingested, FhirError> {
        match self.submit(Write::Ingest(Box::new(inbound))).await? {
            Outcome::Ingested(done) => Ok(done),
            _ => unreachable!("an ingest yields an ingest outcome"),
        }
    }

    /// Removes events and idempotency keys older than the given times (microseconds).
    pub async fn prune(&self, events_before: i64, keys_before: i64) -> Result<(), FhirError> {
        self.submit(Write::Prune {
            events_before,
            keys_before,
        })
        .await
        .map(|_| ())
    }

    /// Runs a write and, once it has committed, its effects outside the store: a
    /// write that moved identifiers between persons (a merge by ADT, by Patient.link,
    /// by an operator, in a Bundle from any face) drops the cached answers it made
    /// stale before anyone hears of it.
    async fn submit(&self, write: Write) -> Result<Outcome, FhirError> {
        let done = self
            .writer
            .submit(WriteCommand {
                ctx: self.ctx.clone(),
                write,
            })
            .await?;
        if done.moved_identities {
            match &done.outcome {
                Outcome::Ingested(Ingested::Applied { invalidate }) if !invalidate.is_empty() => {
                    self.identities.invalidate(invalidate).await
                }
                _ => self.identities.forget_all().await,
            }
        }
        Ok(done.outcome)
    }

    pub async fn read(&self, resource_type: &str, id: &str) -> Result<StoredResource, FhirError> {
        check_type(resource_type)?;
        self.store
            .read(resource_type, id)
            .await?
            .ok_or_else(|| not_found(resource_type, id))
    }

    pub async fn vread(
        &self,
        resource_type: &str,
        id: &str,
        version: &str,
    ) -> Result<StoredResource, FhirError> {
        check_type(resource_type)?;
        let v: i64 = version.parse().map_err(|_| {
            FhirError::invalid(
                format!("{resource_type}.meta.versionId"),
                "a version id is a positive integer",
            )
        })?;
        self.store
            .vread(resource_type, id, v)
            .await?
            .ok_or_else(|| FhirError::NotFound {
                resource: format!("{resource_type}/{id}/_history/{version}"),
            })
    }

    pub async fn history(
        &self,
        resource_type: &str,
        id: &str,
        base: &str,
    ) -> Result<String, FhirError> {
        check_type(resource_type)?;
        let versions = self.store.history(resource_type, id).await?;
        if versions.is_empty() {
            return Err(not_found(resource_type, id));
        }
        Ok(bundle::history(base, &versions))
    }

    pub async fn search(
        &self,
        resource_type: &str,
        params: &[(String, String)],
        lenient: bool,
        base: &str,
    ) -> Result<String, FhirError> {
        check_type(resource_type)?;
        // Only a Patient search is rewritten: other searches are not copied.
        let rewritten;
        let params = if resource_type == "Patient" {
            let mut copy = params.to_vec();
            self.patients_by_person(&mut copy).await?;
            rewritten = copy;
            &rewritten
        } else {
            params
        };
        let query = search::parse_query(resource_type, params, lenient)?;
        let page = self.store.search(&query).await?;
        Ok(bundle::searchset(base, &query, &page))
    }

    /// `Patient?identifier=system|value` finds the Patients of the person the
    /// identifier names, through the identity index, so a retired (merged) identifier
    /// still finds them: the parameter becomes an `_id` list.
    async fn patients_by_person(&self, params: &mut [(String, String)]) -> Result<(), FhirError> {
        for (name, value) in params.iter_mut() {
            if name != "identifier" || value.contains(',') {
                continue;
            }
            let Some((system, id)) = value.split_once('|') else {
                continue;
            };
            if system.is_empty() || id.is_empty() {
                continue;
            }
            let wanted = crate::identity::Identifier::new(system, id, None);
            let person = self
                .identities
                .lookup(&self.store, std::slice::from_ref(&wanted))
                .await?
                .pop()
                .flatten();
            let ids = match person {
                Some(p) => self.store.patients_of(&p.id).await?,
                None => Vec::new(),
            };
            *name = "_id".into();
            // No Patient: an id no resource can have, so the search finds nothing.
            *value = if ids.is_empty() {
                "-".into()
            } else {
                ids.join(",")
            };
        }
        Ok(())
    }

    /// Makes referrals of the stored Tasks that `organization` (a tenant just
    /// registered) owns and that are not referrals yet; returns how many.
    pub async fn adopt(&self, organization: &str) -> Result<usize, FhirError> {
        let mut after = String::new();
        let mut adopted = 0;
        loop {
            let task_ids = self.store.resource_ids("Task", &after, 500).await?;
            let Some(last) = task_ids.last().cloned() else {
                return Ok(adopted);
            };
            let write = Write::Adopt {
                organization: organization.to_string(),
                task_ids,
            };
            match self.submit(write).await? {
                Outcome::Adopted(n) => adopted += n,
                _ => unreachable!("an adoption yields a count"),
            }
            after = last;
        }
    }

    /// Creates the Organization resource of every configured organisation that does not
    /// exist yet, so that Tasks can name it as owner.
    pub async fn seed_organizations(&self) -> Result<(), FhirError> {
        for org in self.ctx.organizations.all().iter() {
            if self.store.read("Organization", &org.id).await?.is_some() {
                continue;
            }
            let identifiers: Vec<Value> = org
                .identifiers
                .iter()
                .map(|i| serde_json::json!({"system": i.system, "value": i.value}))
                .collect();
            let mut resource = serde_json::json!({
                "resourceType": "Organization",
                "id": org.id,
                "active": true,
                "name": org.name,
            });
            if !identifiers.is_empty() {
                resource["identifier"] = Value::Array(identifiers);
            }
            self.update("Organization", &org.id, resource, None, None)
                .await?;
        }
        Ok(())
    }
}

fn check_type(resource_type: &str) -> Result<(), FhirError> {
    if super::is_supported_type(resource_type) {
        Ok(())
    } else {
        Err(FhirError::UnsupportedType(resource_type.to_string()))
    }
}

fn not_found(resource_type: &str, id: &str) -> FhirError {
    FhirError::NotFound {
        resource: format!("{resource_type}/{id}"),
    }
}

fn parse_etag(s: &str) -> Result<i64, FhirError> {
    super::version_from_etag(s).ok_or_else(|| {
        FhirError::invalid(
            "If-Match",
            format!("{s:?} is not an ETag this server issued (W/\"n\")"),
        )
    })
}

fn conditional_query(
    resource_type: &str,
    query: &str,
    what: &str,
) -> Result<SearchQuery, FhirError> {
    let params = bundle::parse_query_string(query.trim_start_matches('?'));
    if params.is_empty() {
        return Err(FhirError::invalid(
            what,
            format!("{what} needs search parameters"),
        ));
    }
    let q = search::parse_query(resource_type, &params, false).map_err(|e| match e {
        FhirError::Invalid(issues) => FhirError::Invalid(
            issues
                .into_iter()
                .map(|i| Issue {
                    expression: Some(what.to_string()),
                    ..i
                })
                .collect(),
        ),
        other => other,
    })?;
    Ok(SearchQuery {
        count: 2,
        includes: vec![],
        total: search::Total::None,
        ..q
    })
}

enum Write {
    Create {
        resource_type: String,
        id: String,
        resource: Value,
        prepared: Box<Prepared>,
        if_none_exist: Option<SearchQuery>,
        must_resolve: Vec<ReferenceCheck>,
        warnings: Vec<Issue>,
        caller: Option<String>,
    },
    Update {
        resource_type: String,
        id: String,
        resource: Value,
        if_match: Option<i64>,
        /// Conditional update: the search that picks the resource; `id` is the body's
        /// id or a server id, used only when nothing matches.
        condition: Option<SearchQuery>,
        must_resolve: Vec<ReferenceCheck>,
        warnings: Vec<Issue>,
        caller: Option<String>,
    },
    Bundle {
        plan: Plan,
        caller: Option<String>,
        /// By entry index: the prepared form of each new resource.
        prepared: Vec<Option<Prepared>>,
        base: String,
        with_resources: bool,
    },
    Action(Box<ActionRequest>),
    Ingest(Box<Inbound>),
    /// Records the referrals of existing Tasks owned by a newly registered tenant.
    Adopt {
        organization: String,
        task_ids: Vec<String>,
    },
    Prune {
        events_before: i64,
        keys_before: i64,
    },
}

enum Outcome {
    Adopted(usize),
    Written(Written),
    Bundle(String),
    Action(Result<Acted, Refusal>),
    Ingested(Ingested),
    Pruned,
}

struct WriteCommand {
    ctx: Arc<Context>,
    write: Write,
}

/// A command's outcome and what must follow its commit.
struct Done {
    outcome: Outcome,
    /// It moved identifiers between persons (see [`Fhir::submit`]).
    moved_identities: bool,
}

impl Command for WriteCommand {
    type Output = Done;
    type Error = FhirError;

    fn isolation(&self) -> Isolation {
        // Identity rows are staged like resources (see `store::identity`); only a
        // Patient whose `link` merges persons changes stored rows, in a savepoint.
        let linking = |ty: &str, resource: Option<&Value>| {
            if ty == "Patient" && resource.is_some_and(merges_by_link) {
                Isolation::Savepoint
            } else {
                Isolation::None
            }
        };
        match &self.write {
            Write::Create {
                if_none_exist: Some(_),
                ..
            }
            | Write::Update {
                condition: Some(_), ..
            } => Isolation::Search,
            Write::Create {
                resource_type,
                resource,
                ..
            }
            | Write::Update {
                resource_type,
                resource,
                ..
            } => linking(resource_type, Some(resource)),
            Write::Bundle { plan, .. } if plan.searches => Isolation::Search,
            Write::Bundle { plan, .. } => plan
                .entries
                .iter()
                .map(|e| linking(&e.resource_type, e.resource.as_ref()))
                .find(|i| *i != Isolation::None)
                .unwrap_or(Isolation::None),
            Write::Ingest(inbound) => inbound.isolation(),
            Write::Action(_) | Write::Prune { .. } => Isolation::None,
            Write::Adopt { .. } => Isolation::Savepoint,
        }
    }

    fn affinity(&self) -> Option<String> {
        let person = |ty: &str, resource: &Value| {
            let rules = &self.ctx.mappings.current().identity;
            (ty == "Patient")
                .then(|| {
                    rules
                        .from_fhir_patient(resource)
                        .0
                        .iter()
                        .map(crate::identity::Identifier::token)
                        .min()
                })
                .flatten()
        };
        match &self.write {
            Write::Create {
                resource_type,
                resource,
                ..
            } => person(resource_type, resource),
            Write::Update {
                resource_type,
                id,
                resource,
                ..
            } => person(resource_type, resource).or_else(|| Some(format!("{resource_type}/{id}"))),
            Write::Bundle { plan, .. } => plan.entries.iter().find_map(|e| {
                e.resource
                    .as_ref()
                    .and_then(|r| person(&e.resource_type, r))
            }),
            Write::Action(a) => Some(a.referral_id.clone()),
            Write::Ingest(inbound) => inbound.affinity(),
            Write::Adopt { .. } | Write::Prune { .. } => None,
        }
    }

    fn preload(&self, wanted: &mut Preload) {
        let identity = |wanted: &mut Preload, ty: &str, id: Option<&str>, resource: &Value| {
            if ty == "Patient" {
                let rules = &self.ctx.mappings.current().identity;
                wanted
                    .identifiers
                    .extend(id.map(crate::identity::Identifier::patient));
                wanted
                    .identifiers
                    .extend(rules.from_fhir_patient(resource).0);
            }
        };
        match &self.write {
            Write::Create {
                resource_type,
                id,
                resource,
                ..
            } => identity(wanted, resource_type, Some(id), resource),
            Write::Update {
                resource_type,
                id,
                resource,
                ..
            } => {
                wanted.resources.push((resource_type.clone(), id.clone()));
                identity(wanted, resource_type, Some(id), resource);
            }
            Write::Bundle { plan, .. } => {
                for e in &plan.entries {
                    // The planned id, server-assigned on a create, is the Patient's own
                    // identifier: preloaded with the others, it is not locked and looked
                    // up by itself while the command runs.
                    let id = match &e.request {
                        EntryRequest::Create { id, .. } | EntryRequest::Update { id, .. } => {
                            Some(id.as_str())
                        }
                        EntryRequest::Read { .. } | EntryRequest::Search { .. } => None,
                    };
                    if let Some(resource) = &e.resource {
                        identity(wanted, &e.resource_type, id, resource);
                    }
                }
            }
            Write::Action(a) => {
                wanted.referrals.push(a.referral_id.clone());
                if let Some(task) = &a.task_hint {
                    wanted.resources.push(("Task".into(), task.clone()));
                }
            }
            Write::Ingest(inbound) => inbound.preload(wanted),
            _ => {}
        }
    }

    fn apply<'a, 'c: 'a>(self, tx: &'a mut Tx<'c>) -> BoxFuture<'a, Result<Done, FhirError>> {
        Box::pin(async move {
            let moves = tx.identity_moves();
            let outcome = self.run(tx).await?;
            Ok(Done {
                outcome,
                moved_identities: tx.identity_moves() != moves,
            })
        })
    }
}

impl WriteCommand {
    async fn run(self, tx: &mut Tx<'_>) -> Result<Outcome, FhirError> {
        {
            let ctx = &self.ctx;
            let now = datetime::now_micros();
            match self.write {
                Write::Create {
                    resource_type,
                    id,
                    resource,
                    prepared,
                    if_none_exist,
                    must_resolve,
                    warnings,
                    caller,
                } => {
                    if let Some(q) = if_none_exist
                        && let Some(found) = find_existing(tx, &q).await?
                    {
                        return Ok(Outcome::Written(Written {
                            stored: found,
                            status: 200,
                            warnings,
                        }));
                    }
                    resolve_all(tx, &must_resolve).await?;
                    let one = One {
                        resource_type: &resource_type,
                        id,
                        create_only: true,
                        if_match: None,
                        link: true,
                        caller: caller.as_deref(),
                    };
                    write_one(tx, ctx, one, resource, Some(*prepared), warnings, now)
                        .await
                        .map(Outcome::Written)
                }
                Write::Update {
                    resource_type,
                    id,
                    resource,
                    if_match,
                    condition,
                    must_resolve,
                    warnings,
                    caller,
                } => {
                    let (id, create_only) = match condition {
                        Some(q) => {
                            let body_id = resource.get("id").and_then(Value::as_str);
                            pick_for_update(tx, &q, &id, body_id, if_match).await?
                        }
                        None => (id, false),
                    };
                    resolve_all(tx, &must_resolve).await?;
                    let one = One {
                        resource_type: &resource_type,
                        id,
                        create_only,
                        if_match,
                        link: true,
                        caller: caller.as_deref(),
                    };
                    write_one(tx, ctx, one, resource, None, warnings, now)
                        .await
                        .map(Outcome::Written)
                }
                Write::Bundle {
                    plan,
                    caller,
                    prepared,
                    base,
                    with_resources,
                } => {
                    let kind = plan.kind;
                    let results =
                        run_bundle(tx, ctx, plan, prepared, &base, caller.as_deref(), now).await?;
                    Ok(Outcome::Bundle(bundle::response(
                        kind,
                        &base,
                        &results,
                        with_resources,
                    )))
                }
                Write::Action(request) => run_action(tx, ctx, *request, now)
                    .await
                    .map(Outcome::Action),
                Write::Ingest(inbound) => super::ingest::ingest(tx, ctx, *inbound, now)
                    .await
                    .map(Outcome::Ingested),
                Write::Adopt {
                    organization,
                    task_ids,
                } => adopt(tx, ctx, &organization, &task_ids, now)
                    .await
                    .map(Outcome::Adopted),
                Write::Prune {
                    events_before,
                    keys_before,
                } => {
                    tx.prune(events_before, keys_before).await?;
                    Ok(Outcome::Pruned)
                }
            }
        }
    }
}

impl From<StoreError> for FhirError {
    fn from(e: StoreError) -> FhirError {
        if e.is_unique_violation() {
            FhirError::Conflict("a concurrent request changed the same resource; retry".into())
        } else {
            FhirError::Store(e)
        }
    }
}

/// For conditional create: the single match, none, or an error when ambiguous.
async fn find_existing(
    tx: &mut Tx<'_>,
    q: &SearchQuery,
) -> Result<Option<StoredResource>, FhirError> {
    // Two gateway processes must not both find nothing and both create.
    tx.lock(&format!("{}?{:?}", q.resource_type, q.echo))
        .await?;
    let ids = tx.search_ids(q).await?;
    match ids.as_slice() {
        [] => Ok(None),
        [id] => Ok(tx.current(&q.resource_type, id).await?),
        _ => Err(FhirError::MultipleMatches(format!(
            "the condition matches more than one {}; make it more selective",
            q.resource_type
        ))),
    }
}

/// The search of a conditional update (`PUT Type?…`): the parameters' own errors
/// name them (`Task?colour`).
fn update_condition(resource_type: &str, query: &str) -> Result<SearchQuery, FhirError> {
    let params = bundle::parse_query_string(query.trim_start_matches('?'));
    if params.is_empty() {
        return Err(FhirError::invalid(
            format!("{resource_type}?"),
            "a conditional update needs search parameters",
        ));
    }
    let q = search::parse_query(resource_type, &params, false)?;
    Ok(SearchQuery {
        count: 2,
        includes: vec![],
        total: search::Total::None,
        ..q
    })
}

/// Which resource a conditional update writes, by FHIR's rules: `(id, create_only)`.
/// `planned` is the id a create gets (the body's, or a server id); `body_id` the id the
/// body carries, if any.
async fn pick_for_update(
    tx: &mut Tx<'_>,
    q: &SearchQuery,
    planned: &str,
    body_id: Option<&str>,
    if_match: Option<i64>,
) -> Result<(String, bool), FhirError> {
    let ty = &q.resource_type;
    // Two gateway processes must not both find nothing and both create.
    tx.lock(&format!("{ty}?{:?}", q.echo)).await?;
    let ids = tx.search_ids(q).await?;
    match ids.as_slice() {
        [] => {
            if let Some(expected) = if_match {
                return Err(FhirError::PreconditionFailed {
                    expected: format!("W/\"{expected}\""),
                    current: 0,
                });
            }
            if body_id.is_some() && tx.exists(ty, planned).await? {
                return Err(FhirError::Conflict(format!(
                    "{ty}/{planned} exists but does not match the condition; \
                     update it by id, or leave the id out to create a new one"
                )));
            }
            Ok((planned.to_string(), true))
        }
        [found] => match body_id {
            Some(id) if id != found => Err(FhirError::invalid(
                format!("{ty}.id"),
                format!("id {id:?} in the body is not {found:?}, the {ty} the condition matches"),
            )),
            _ => Ok((found.clone(), false)),
        },
        _ => Err(FhirError::MultipleMatches(format!(
            "the condition matches more than one {ty}; make it more selective"
        ))),
    }
}

async fn resolve_all(tx: &mut Tx<'_>, checks: &[ReferenceCheck]) -> Result<(), FhirError> {
    let mut issues = Vec::new();
    for c in checks {
        if !tx.exists(&c.resource_type, &c.id).await? {
            issues.push(bundle::unresolved(c));
        }
    }
    if issues.is_empty() {
        Ok(())
    } else {
        Err(FhirError::Unprocessable(issues))
    }
}

struct One<'r> {
    resource_type: &'r str,
    id: String,
    create_only: bool,
    if_match: Option<i64>,
    /// Link a Patient to its person (not when the caller has resolved it already).
    link: bool,
    /// The organisation the client is bound to; `None`: unrestricted.
    caller: Option<&'r str>,
}

/// A new resource made ready for storage on the caller's thread, so that the writer
/// (which is serial) only patches in the timestamp.
struct Prepared {
    serialized: super::Serialized,
    index: search::IndexEntries,
}

impl Prepared {
    fn new(
        resource_type: &str,
        resource: &Value,
        id: &str,
        version: i64,
        ctx: &Context,
    ) -> Prepared {
        Prepared {
            serialized: super::serialize(resource, id, version),
            index: search::extract(resource_type, resource, ctx.own_base.as_deref()),
        }
    }
}

/// Creates or replaces a resource the gateway itself maintains (feed Patients and
/// Encounters, re-pointed Tasks), inside the current transaction. The caller has
/// resolved identity: a Patient written here is not linked again. `new` says the
/// caller knows it does not exist yet, so it is not looked up.
pub(super) async fn put(
    tx: &mut Tx<'_>,
    ctx: &Context,
    resource_type: &str,
    id: &str,
    resource: Value,
    new: bool,
    now: i64,
) -> Result<Written, FhirError> {
    let one = One {
        resource_type,
        id: id.to_string(),
        create_only: new,
        if_match: None,
        link: false,
        caller: None,
    };
    write_one(tx, ctx, one, resource, None, Vec::new(), now).await
}

/// Writes one resource version (and the referral it implies) into the transaction.
/// `prepared` is used when the version turns out to be a new resource's first.
async fn write_one(
    tx: &mut Tx<'_>,
    ctx: &Context,
    one: One<'_>,
    resource: Value,
    prepared: Option<Prepared>,
    mut warnings: Vec<Issue>,
    now: i64,
) -> Result<Written, FhirError> {
    let ty = one.resource_type;
    let current = if one.create_only {
        None
    } else {
        tx.current(ty, &one.id).await?
    };
    if let Some(expected) = one.if_match {
        let actual = current.as_ref().map_or(0, |c| c.version);
        if actual != expected {
            return Err(FhirError::PreconditionFailed {
                expected: format!("W/\"{expected}\""),
                current: actual,
            });
        }
    }
    let old: Option<Value> = match &current {
        Some(c) => Some(serde_json::from_str(&c.body).map_err(|e| {
            tracing::error!(message = "Stored resource is not JSON.", resource_type = ty, id = %one.id, error = %e);
            FhirError::Conflict(format!("the stored {ty}/{} cannot be read", one.id))
        })?),
        None => None,
    };
    if let Some(org) = one.caller {
        check_write(tx, ctx, org, ty, &one.id, old.as_ref(), &resource).await?;
    }
    if let (Some(cur), Some(old)) = (&current, &old) {
        if ty == "Task" {
            validate::check_task_transition(old, &resource)?;
        }
        if same_content(old, &resource) {
            return Ok(Written {
                stored: cur.clone(),
                status: 200,
                warnings,
            });
        }
    }
    let version = current.as_ref().map_or(1, |c| c.version + 1);
    if ty == "Patient" && one.link {
        link_patient(tx, ctx, &one.id, &resource, now, &mut warnings).await?;
    }
    if ty == "Task" {
        record_referral(
            tx,
            ctx,
            &one.id,
            &resource,
            old.as_ref(),
            version,
            now,
            &mut warnings,
        )
        .await?;
    }
    let prepared = match prepared {
        Some(p) if version == 1 => p,
        _ => Prepared::new(ty, &resource, &one.id, version, ctx),
    };
    let stored = StoredResource {
        resource_type: ty.to_string(),
        id: one.id,
        version,
        last_updated: now,
        body: prepared
            .serialized
            .with_last_updated(&datetime::format_instant(now)),
    };
    let index = prepared.index;
    record_facts(
        tx,
        ctx,
        ty,
        &stored.id,
        version,
        &resource,
        old.as_ref(),
        now,
    )
    .await?;
    if matches!(ty, "Task" | "ServiceRequest") {
        for subscription in ctx.subscriptions.matching(&resource, now) {
            tx.stage_notification(&subscription, format!("{ty}/{}", stored.id), version, now);
        }
    }
    tx.stage(stored.clone(), index);
    Ok(Written {
        stored,
        status: if current.is_none() { 201 } else { 200 },
        warnings,
    })
}

/// Stages what outcome measures count in this version (`measures::facts`): replacing
/// the earlier versions' facts, and for a Task the CBO's first contact (accepted or
/// started), with its focus ServiceRequest's domain.
#[allow(clippy::too_many_arguments)]
async fn record_facts(
    tx: &mut Tx<'_>,
    ctx: &Context,
    ty: &str,
    id: &str,
    version: i64,
    resource: &Value,
    old: Option<&Value>,
    now: i64,
) -> Result<(), FhirError> {
    let mappings = ctx.mappings.current();
    let (mut facts, replace) =
        crate::measures::facts::of(ty, id, resource, &mappings.screening, &mappings.domains);
    if ty == "Task" {
        let contacted = |t: Option<&Value>| {
            matches!(
                t.and_then(|t| t.get("status")).and_then(Value::as_str),
                Some("accepted" | "in-progress" | "completed")
            )
        };
        if contacted(Some(resource)) && !contacted(old) {
            let domain = match local_target(resource.get("focus"), ctx) {
                Some(("ServiceRequest", sr)) => match tx.current("ServiceRequest", sr).await? {
                    Some(stored) => serde_json::from_str::<Value>(&stored.body)
                        .ok()
                        .and_then(|v| mappings.domains.of(&v)),
                    None => None,
                },
                _ => None,
            };
            facts.extend(crate::measures::facts::contact(
                resource,
                domain.as_deref(),
                now,
            ));
        }
        // The referral's steps, for the programme's report: each kept once written.
        let moved = old.is_none_or(|o| o.get("status") != resource.get("status"));
        if moved && let Some(referral) = tx.referral_for_task(id).await? {
            facts.extend(crate::measures::facts::referral_steps(
                resource,
                &referral.organization,
                referral.domain.as_deref(),
                referral.created_at,
                now,
            ));
        }
    }
    // A first version has no earlier facts to replace.
    tx.stage_facts(ty, id, replace && version > 1, facts);
    Ok(())
}

/// Equal apart from `id`, `meta.versionId` and `meta.lastUpdated`: an update that
/// changes nothing creates no new version (clients that re-send are not penalised).
fn same_content(old: &Value, new: &Value) -> bool {
    fn strip(v: &Value) -> Value {
        let mut v = v.clone();
        if let Some(m) = v.as_object_mut() {
            m.remove("id");
            if let Some(Value::Object(meta)) = m.get_mut("meta") {
                meta.remove("versionId");
                meta.remove("lastUpdated");
                if meta.is_empty() {
                    m.remove("meta");
                }
            }
        }
        v
    }
    strip(old) == strip(new)
}

/// An action's answer as the writer leaves it: the referral view is built by the
/// caller, off the writer's serial path, unless an idempotency record needs it.
enum Acted {
    Done(ActionDone),
    View(Box<ActedView>),
}

struct ActedView {
    summary: projection::Summary,
    task: Value,
    related: Related,
    omit: Vec<String>,
}

impl Acted {
    fn answer(self) -> ActionDone {
        match self {
            Acted::Done(done) => done,
            Acted::View(v) => ActionDone {
                status: 200,
                body: projection::project(&v.summary, &v.task, &v.related, &v.omit).to_string(),
                replayed: false,
            },
        }
    }
}

async fn run_action(
    tx: &mut Tx<'_>,
    ctx: &Context,
    req: ActionRequest,
    now: i64,
) -> Result<Result<Acted, Refusal>, FhirError> {
    if let Some(k) = &req.idempotency
        && let Some(first) = tx.idempotent_response(&req.organization, &k.key).await?
    {
        if first.fingerprint != k.fingerprint {
            return Ok(Err(Refusal::IdempotencyKeyReused));
        }
        return Ok(Ok(Acted::Done(ActionDone {
            status: first.status,
            body: first.body,
            replayed: true,
        })));
    }
    let Some(referral) = tx
        .referral(&req.referral_id)
        .await?
        .filter(|r| r.organization == req.organization)
    else {
        return Ok(Err(Refusal::NotFound));
    };
    let Some(current) = tx.current("Task", &referral.task_id).await? else {
        return Ok(Err(Refusal::NotFound));
    };
    // The referral row was read before the Task's lock was taken; the Task, read under
    // it, has the version a concurrent action may just have committed.
    if let Some(expected) = req.if_match
        && expected != current.version
    {
        return Ok(Err(Refusal::VersionConflict {
            current: current.version,
        }));
    }
    let task: Value = serde_json::from_str(&current.body).map_err(|_| {
        FhirError::Conflict(format!(
            "the stored Task/{} cannot be read",
            referral.task_id
        ))
    })?;
    let mut related = req.related;
    let missing = projection::wanted(&task, &related);
    if !missing.is_empty() {
        let found = InTx(tx).fetch(&missing).await?;
        related.add(&missing, found);
    }
    let service_request = related
        .get(task.get("focus"))
        .filter(|v| !v.is_null())
        .cloned();
    let actor = Actor {
        organization: &req.organization,
        name: &req.organization_name,
    };
    let is_note = matches!(req.action, Action::Note { .. });
    let at = datetime::format_instant(now);
    let edit = match action::apply(
        req.action,
        &task,
        service_request.as_ref(),
        actor,
        &ctx.mappings.current().reason_codes,
        &at,
        super::new_id,
    ) {
        Ok(edit) => edit,
        Err(e) => return Ok(Err(Refusal::Transition(e))),
    };
    for (ty, id, resource) in edit.created {
        validate::validate(ty, &resource, None)?;
        let one = One {
            resource_type: ty,
            id,
            create_only: true,
            if_match: None,
            link: true,
            caller: None,
        };
        write_one(tx, ctx, one, resource, None, vec![], now).await?;
    }
    validate::validate("Task", &edit.task, Some(&referral.task_id))?;
    let one = One {
        resource_type: "Task",
        id: referral.task_id.clone(),
        create_only: false,
        if_match: None,
        link: true,
        caller: None,
    };
    write_one(tx, ctx, one, edit.task.clone(), None, vec![], now).await?;
    let updated = tx.referral(&req.referral_id).await?.unwrap_or(referral);
    let view = match edit.note.filter(|_| is_note) {
        Some(note) => Acted::Done(ActionDone {
            status: 201,
            body: serde_json::json!({"author": "cbo", "at": note["time"], "text": note["text"]})
                .to_string(),
            replayed: false,
        }),
        None => Acted::View(Box::new(ActedView {
            summary: projection::summary(&updated, now),
            task: edit.task,
            related,
            omit: req.omit,
        })),
    };
    let Some(k) = req.idempotency else {
        return Ok(Ok(view));
    };
    let done = view.answer();
    let response = crate::store::IdempotentResponse {
        fingerprint: k.fingerprint,
        status: done.status,
        body: done.body.clone(),
    };
    tx.stage_idempotent_response(&req.organization, &k.key, response, now);
    Ok(Ok(Acted::Done(done)))
}

/// Reads around a change inside its transaction.
struct InTx<'a, 'c>(&'a mut Tx<'c>);

impl projection::Fetch for InTx<'_, '_> {
    type Error = StoreError;

    async fn fetch(
        &mut self,
        keys: &[(String, String)],
    ) -> Result<Vec<StoredResource>, StoreError> {
        let mut found = Vec::new();
        for (ty, id) in keys {
            found.extend(self.0.peek(ty, id).await?);
        }
        Ok(found)
    }
}

/// Links a Patient being written to its person. Identifiers that name someone else are
/// not merged: the conflict is recorded for review and reported as a warning.
async fn link_patient(
    tx: &mut Tx<'_>,
    ctx: &Context,
    id: &str,
    resource: &Value,
    now: i64,
    warnings: &mut Vec<Issue>,
) -> Result<(), FhirError> {
    let linked =
        crate::identity::link_patient(tx, &ctx.mappings.current().identity, id, resource, now)
            .await?;
    for (path, why) in linked.skipped {
        let text = format!("{path} is not used to identify the person: {why}");
        warnings.push(Issue::warning(IssueCode::Value, path, text));
    }
    if !linked.conflict.is_empty() {
        let reason = "Patient identifiers belong to another person; not merged";
        tx.record_conflict(
            "fhir",
            &format!("Patient/{id}"),
            reason,
            &linked.conflict,
            now,
        );
        warnings.push(Issue::warning(
            IssueCode::Conflict,
            "Patient.identifier",
            format!("{reason}: held for identity review"),
        ));
    }
    merge_by_link(tx, ctx, id, resource, &linked.person, now, warnings).await
}

/// The type of a Patient `link` that merges persons: `replaced-by` or `replaces`.
fn merging_link(link: &Value) -> Option<&str> {
    link.get("type")
        .and_then(Value::as_str)
        .filter(|kind| matches!(*kind, "replaced-by" | "replaces"))
}

/// Whether a Patient's `link` merges persons (see [`merge_by_link`]).
fn merges_by_link(resource: &Value) -> bool {
    resource
        .get("link")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .any(|l| merging_link(l).is_some())
}

/// A Patient whose `link` says it is `replaced-by` another, or `replaces` one, merges
/// the two persons the way an A40 does: the retired person's identifiers become
/// aliases of the survivor and its open referrals follow to the survivor's Patient.
async fn merge_by_link(
    tx: &mut Tx<'_>,
    ctx: &Context,
    id: &str,
    resource: &Value,
    person: &crate::identity::Person,
    now: i64,
    warnings: &mut Vec<Issue>,
) -> Result<(), FhirError> {
    use crate::identity::{self, Identifier};
    for (i, link) in resource
        .get("link")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let Some(kind) = merging_link(link) else {
            continue;
        };
        let Some(("Patient", other)) = local_target(link.get("other"), ctx) else {
            continue;
        };
        if other == id {
            continue;
        }
        let other_id = Identifier::patient(other);
        tx.lock_identifiers(std::slice::from_ref(&other_id)).await?;
        let other_person = match tx.identifier_owner(&other_id).await? {
            Some(owner) => tx.person(&owner).await?,
            None => None,
        };
        let Some(other_person) = other_person else {
            warnings.push(Issue::warning(
                IssueCode::NotFound,
                format!("Patient.link[{i}].other"),
                format!("Patient/{other} is not known here: nothing was merged"),
            ));
            continue;
        };
        let (retired, survivor, survivor_patient) = if kind == "replaced-by" {
            (person, &other_person, other)
        } else {
            (&other_person, person, id)
        };
        let cause = format!("Patient/{id} link {kind} Patient/{other}");
        let Some(record) = identity::merge(tx, retired, survivor, "fhir", &cause, now).await?
        else {
            continue;
        };
        // Boxed: re-pointing writes a Task, and writing is what got us here.
        Box::pin(super::ingest::follow_survivor(
            tx,
            ctx,
            &record.id,
            &retired.client_ref,
            survivor_patient,
            now,
        ))
        .await?;
    }
    Ok(())
}

/// A referral Task owned by a known organisation becomes a referral with a
/// `referral.created` event; every later version updates it and appends the event that
/// says what changed (status, a note, or other details).
#[allow(clippy::too_many_arguments)]
async fn record_referral(
    tx: &mut Tx<'_>,
    ctx: &Context,
    task_id: &str,
    task: &Value,
    old: Option<&Value>,
    version: i64,
    now: i64,
    warnings: &mut Vec<Issue>,
) -> Result<(), FhirError> {
    if !validate::is_referral_task(task) {
        return Ok(());
    }
    let Some(status) = CboStatus::of_task(task) else {
        return Ok(());
    };
    if let Some(old) = old
        && let Some(referral) = tx.referral_for_task(task_id).await?
    {
        // The ServiceRequest is not re-read on every Task change: the need's domain is
        // kept, and the Task's own priority wins over the one recorded.
        let (urgency, respond_by, respond_by_text, _) =
            projection::summary_fields(task, None, &Default::default());
        let status_changed = referral.status != status.as_str();
        // A Task re-pointed at another Patient (a merge) is that Patient's client's.
        let client_ref = match local_target(task.get("for"), ctx) {
            Some(("Patient", id)) if task.get("for") != old.get("for") => {
                Some(tx.client_ref(id, now).await?)
            }
            _ => referral.client_ref.clone(),
        };
        let next = Referral {
            client_ref,
            status: status.as_str().to_string(),
            version,
            urgency: if task.get("priority").is_some() {
                urgency
            } else {
                referral.urgency.clone()
            },
            respond_by,
            respond_by_text,
            ..referral
        };
        if status_changed {
            let event = match status {
                CboStatus::Cancelled => "referral.cancelled",
                CboStatus::Expired => "referral.expired",
                _ => "referral.status_changed",
            };
            tx.stage_event(event, &next, now);
        }
        if note_count(task) > note_count(old) {
            tx.stage_event("referral.note_added", &next, now);
        } else if !status_changed {
            tx.stage_event("referral.updated", &next, now);
        }
        tx.stage_referral(next, now);
        return Ok(());
    }
    let service_request = match local_target(task.get("focus"), ctx) {
        Some((ty @ "ServiceRequest", id)) => tx
            .peek(ty, id)
            .await?
            .and_then(|s| serde_json::from_str::<Value>(&s.body).ok()),
        _ => None,
    };
    let (urgency, respond_by, respond_by_text, domain) = projection::summary_fields(
        task,
        service_request.as_ref(),
        &ctx.mappings.current().domains,
    );
    match route(tx, ctx, task).await? {
        Some(organization) => {
            let client_ref = match local_target(task.get("for"), ctx) {
                Some(("Patient", id)) => Some(tx.client_ref(id, now).await?),
                _ => None,
            };
            let referral = Referral {
                id: super::new_id(),
                organization,
                task_id: task_id.to_string(),
                status: status.as_str().to_string(),
                version,
                urgency,
                respond_by,
                respond_by_text,
                client_ref,
                domain,
                created_at: now,
            };
            tx.stage_event("referral.created", &referral, now);
            tx.stage_referral(referral, now);
        }
        None if task.get("owner").is_none() => warnings.push(Issue::warning(
            IssueCode::Informational,
            "Task.owner",
            "the Task has no owner; no referral is created until an owner is set",
        )),
        None => warnings.push(Issue::warning(
            IssueCode::NotFound,
            "Task.owner",
            "Task.owner is not an organisation known to this gateway; the Task is stored as plain FHIR and no referral was created",
        )),
    }
    Ok(())
}

async fn adopt(
    tx: &mut Tx<'_>,
    ctx: &Context,
    organization: &str,
    task_ids: &[String],
    now: i64,
) -> Result<usize, FhirError> {
    let mut adopted = 0;
    for id in task_ids {
        let Some(current) = tx.current("Task", id).await? else {
            continue;
        };
        if tx.referral_for_task(id).await?.is_some() {
            continue;
        }
        let Ok(task) = serde_json::from_str::<Value>(&current.body) else {
            continue;
        };
        if route(tx, ctx, &task).await?.as_deref() != Some(organization) {
            continue;
        }
        let mut warnings = Vec::new();
        record_referral(
            tx,
            ctx,
            id,
            &task,
            Some(&task),
            current.version,
            now,
            &mut warnings,
        )
        .await?;
        adopted += 1;
    }
    Ok(adopted)
}

/// What the Task's owner may change (fhir.md); `meta` and `text` are bookkeeping.
const OWNER_MAY_CHANGE: &[&str] = &[
    "status",
    "statusReason",
    "output",
    "note",
    "lastModified",
    "meta",
    "text",
];

/// Does `reference` name the organisation `org`, by `Organization/{id}` or by one of
/// its identifiers?
fn names_organization(ctx: &Context, reference: Option<&Value>, org: &str) -> bool {
    let Some(reference) = reference else {
        return false;
    };
    if let Some(("Organization", id)) = local_target(Some(reference), ctx)
        && id == org
    {
        return true;
    }
    let (Some(system), Some(value)) = (
        reference
            .pointer("/identifier/system")
            .and_then(Value::as_str),
        reference
            .pointer("/identifier/value")
            .and_then(Value::as_str),
    ) else {
        return false;
    };
    ctx.organizations.all().iter().any(|o| {
        o.id == org
            && o.identifiers
                .iter()
                .any(|i| i.system == system && i.value == value)
    })
}

/// Who may write what, for a client bound to organisation `org` (README, "Who may
/// write what"); the one place these rules live, for single requests and Bundle
/// entries alike. A new resource is remembered as `org`'s.
///
/// - A Task: its requester's side (the organisation `requester` names, or the one that
///   created it) changes it freely; its owner only status, statusReason and output, and
///   adds notes; anyone else nothing. A new Task may not name another configured
///   organisation as its requester.
/// - A directory entry of a configured organisation (HealthcareService `providedBy`,
///   Location `managingOrganization`, an Organization that is one): only that
///   organisation writes it, before and after the change.
/// - Anything else: created by anyone the scopes allow; changed only by the
///   organisation that created it.
async fn check_write(
    tx: &mut Tx<'_>,
    ctx: &Context,
    org: &str,
    ty: &str,
    id: &str,
    old: Option<&Value>,
    new: &Value,
) -> Result<(), FhirError> {
    let refuse = |expression: String, message: String| {
        Err(FhirError::Forbidden {
            expression: Some(expression),
            message,
        })
    };
    let named: Vec<String> = old
        .into_iter()
        .chain([new])
        .filter_map(|version| directory_owner(ctx, ty, id, version))
        .collect();
    if let Some(other) = named.iter().find(|n| *n != org) {
        return refuse(
            ty.to_string(),
            format!(
                "this {ty} is Organization/{other}'s directory entry; only Organization/{other} may write it"
            ),
        );
    }
    if named.is_empty() {
        match (ty, old) {
            ("Task", None) => {
                if let Some(other) = configured_organization(ctx, new.get("requester"))
                    && other != org
                {
                    return refuse(
                        "Task.requester".into(),
                        format!(
                            "a client of Organization/{org} may not make a Task on behalf of Organization/{other}"
                        ),
                    );
                }
            }
            ("Task", Some(old)) => {
                let author = tx.author(ty, id).await?;
                check_task_change(ctx, org, author.as_deref() == Some(org), old, new)?;
            }
            (_, None) => {}
            (_, Some(_)) => {
                if tx.author(ty, id).await?.as_deref() != Some(org) {
                    return refuse(
                        ty.to_string(),
                        format!(
                            "{ty}/{id} was not created by Organization/{org}, so its clients may not change it"
                        ),
                    );
                }
            }
        }
    }
    if old.is_none() {
        tx.stage_author(ty, id, org);
    }
    Ok(())
}

/// The configured organisation whose directory entry `resource` is, if it is one.
fn directory_owner(ctx: &Context, ty: &str, id: &str, resource: &Value) -> Option<String> {
    match ty {
        "HealthcareService" => configured_organization(ctx, resource.get("providedBy")),
        "Location" => configured_organization(ctx, resource.get("managingOrganization")),
        "Organization" => ctx
            .organizations
            .all()
            .iter()
            .find(|o| o.id == id)
            .map(|o| o.id.clone()),
        _ => None,
    }
}

/// The configured organisation a reference names, by `Organization/{id}` or by one of
/// its identifiers.
fn configured_organization(ctx: &Context, reference: Option<&Value>) -> Option<String> {
    ctx.organizations
        .all()
        .iter()
        .find(|o| names_organization(ctx, reference, &o.id))
        .map(|o| o.id.clone())
}

/// The requester's side (the organisation `requester` names, or `authored`: the one
/// that created the Task) may change a Task freely; its owner only its status,
/// statusReason and output, and may add notes; anyone else nothing.
fn check_task_change(
    ctx: &Context,
    org: &str,
    authored: bool,
    old: &Value,
    new: &Value,
) -> Result<(), FhirError> {
    if authored || names_organization(ctx, old.get("requester"), org) {
        return Ok(());
    }
    if !names_organization(ctx, old.get("owner"), org) {
        return Err(FhirError::Forbidden {
            expression: Some("Task".into()),
            message: format!(
                "Organization/{org} is neither the requester nor the owner of this Task, so it may not change it"
            ),
        });
    }
    let keys = old
        .as_object()
        .into_iter()
        .chain(new.as_object())
        .flat_map(|o| o.keys());
    for key in keys {
        if OWNER_MAY_CHANGE.contains(&key.as_str()) || old.get(key) == new.get(key) {
            continue;
        }
        return Err(FhirError::Forbidden {
            expression: Some(format!("Task.{key}")),
            message: format!(
                "the Task's owner may change only status, statusReason and output, and add notes; Task.{key} changed"
            ),
        });
    }
    let old_notes = old.get("note").and_then(Value::as_array);
    let new_notes = new.get("note").and_then(Value::as_array);
    let kept = match (old_notes, new_notes) {
        (None, _) => true,
        (Some(o), Some(n)) => n.len() >= o.len() && n[..o.len()] == o[..],
        (Some(o), None) => o.is_empty(),
    };
    if !kept {
        return Err(FhirError::Forbidden {
            expression: Some("Task.note".into()),
            message: "the Task's owner may add notes but not change or remove existing ones".into(),
        });
    }
    Ok(())
}

fn note_count(task: &Value) -> usize {
    task.get("note")
        .and_then(Value::as_array)
        .map_or(0, Vec::len)
}

/// `(type, id)` of a Reference to a resource on this server.
pub(super) fn local_target<'v>(
    reference: Option<&'v Value>,
    ctx: &Context,
) -> Option<(&'v str, &'v str)> {
    let r = reference?.get("reference")?.as_str()?;
    match reference::parse(r, ctx.own_base.as_deref())? {
        Target::Local { resource_type, id } => Some((resource_type, id)),
        _ => None,
    }
}

/// The configured organisation a Task's owner names: by `Organization/{id}`, by an
/// identifier on the reference, or by an identifier on the stored Organization.
async fn route(tx: &mut Tx<'_>, ctx: &Context, task: &Value) -> Result<Option<String>, FhirError> {
    let Some(owner) = task.get("owner") else {
        return Ok(None);
    };
    let organizations = ctx.organizations.all();
    let mappings = ctx.mappings.current();
    // An organisation's own identifiers (config/) first, then the routing rules.
    let by_identifier = |system: &str, value: &str| {
        organizations
            .iter()
            .find(|o| {
                o.identifiers
                    .iter()
                    .any(|i| i.system == system && i.value == value)
            })
            .map(|o| o.id.clone())
            .or_else(|| {
                mappings
                    .routes
                    .by_identifier(system, value)
                    .map(str::to_string)
            })
    };
    if let (Some(system), Some(value)) = (
        owner.pointer("/identifier/system").and_then(Value::as_str),
        owner.pointer("/identifier/value").and_then(Value::as_str),
    ) && let Some(org) = by_identifier(system, value)
    {
        return Ok(Some(org));
    }
    let Some(r) = owner.get("reference").and_then(Value::as_str) else {
        return Ok(None);
    };
    if let Some(org) = mappings.routes.by_reference(r) {
        return Ok(Some(org.to_string()));
    }
    let Some(Target::Local {
        resource_type: "Organization",
        id,
    }) = reference::parse(r, ctx.own_base.as_deref())
    else {
        return Ok(None);
    };
    if organizations.iter().any(|o| o.id == id) {
        return Ok(Some(id.to_string()));
    }
    let Some(stored) = tx.current("Organization", id).await? else {
        return Ok(None);
    };
    let org: Value = serde_json::from_str(&stored.body).unwrap_or(Value::Null);
    for ident in org
        .get("identifier")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let (Some(s), Some(v)) = (
            ident.get("system").and_then(Value::as_str),
            ident.get("value").and_then(Value::as_str),
        ) && let Some(found) = by_identifier(s, v)
        {
            return Ok(Some(found));
        }
    }
    Ok(None)
}

/// Runs a planned Bundle. A transaction fails as a whole on the first error; a batch
/// reports each entry's own outcome.
async fn run_bundle(
    tx: &mut Tx<'_>,
    ctx: &Context,
    plan: Plan,
    mut prepared: Vec<Option<Prepared>>,
    base: &str,
    caller: Option<&str>,
    now: i64,
) -> Result<Vec<EntryResult>, FhirError> {
    let transaction = plan.kind == BundleKind::Transaction;
    let searches = plan.searches;
    let mut results: Vec<Option<EntryResult>> = (0..plan.entries.len()).map(|_| None).collect();
    let mut reads = Vec::new();
    let mut deferred_checks = Vec::new();

    // Conditional creates first: a match replaces the entry's planned id everywhere.
    let mut entries = plan.entries;
    let mut rewrites: HashMap<String, String> = HashMap::new();
    for e in &mut entries {
        if e.error.is_some() {
            continue;
        }
        if let EntryRequest::Create {
            id,
            if_none_exist: Some(cond),
        } = &e.request
        {
            let found = match conditional_query(
                &e.resource_type,
                cond,
                &format!("Bundle.entry[{}].request.ifNoneExist", e.index),
            ) {
                Ok(q) => find_existing(tx, &q).await,
                Err(err) => Err(err),
            };
            match found {
                Ok(Some(existing)) => {
                    rewrites.insert(
                        format!("{}/{id}", e.resource_type),
                        format!("{}/{}", e.resource_type, existing.id),
                    );
                    results[e.index] = Some(EntryResult::Written {
                        stored: existing,
                        status: 200,
                        warnings: vec![],
                    });
                }
                Ok(None) => {}
                Err(err) if transaction => return Err(err),
                Err(err) => e.error = Some(err),
            }
        }
        // Conditional updates: the match (or the planned id when none) replaces the
        // planned id everywhere, and the entry becomes a plain update or create.
        if let EntryRequest::Update {
            id,
            if_match,
            condition: Some(cond),
        } = &e.request
        {
            let at = format!("Bundle.entry[{}].request", e.index);
            let body_id = e
                .resource
                .as_ref()
                .and_then(|r| r.get("id"))
                .and_then(Value::as_str);
            let picked = async {
                let q = conditional_query(&e.resource_type, cond, &format!("{at}.url"))?;
                let m = if_match
                    .as_deref()
                    .map(parse_etag)
                    .transpose()
                    .map_err(|err| err.within(&at))?;
                pick_for_update(tx, &q, id, body_id, m).await
            }
            .await;
            match picked {
                Ok((found, create_only)) => {
                    if &found != id {
                        rewrites.insert(
                            format!("{}/{id}", e.resource_type),
                            format!("{}/{found}", e.resource_type),
                        );
                    }
                    e.request = if create_only {
                        EntryRequest::Create {
                            id: found,
                            if_none_exist: None,
                        }
                    } else {
                        EntryRequest::Update {
                            id: found,
                            if_match: if_match.clone(),
                            condition: None,
                        }
                    };
                }
                Err(err) if transaction => return Err(err),
                Err(err) => e.error = Some(err),
            }
        }
    }

    // Only conditional references and matched conditional creates change references.
    let may_rewrite = searches || !rewrites.is_empty();
    for e in entries {
        let i = e.index;
        if let Some(err) = e.error {
            results[i] = Some(EntryResult::Failed(err));
            continue;
        }
        if results[i].is_some() {
            continue;
        }
        let (id, create_only, if_match) = match e.request {
            EntryRequest::Create { id, .. } => (id, true, None),
            EntryRequest::Update { id, if_match, .. } => {
                let m = match if_match.as_deref().map(parse_etag).transpose() {
                    Ok(m) => m,
                    Err(err) if transaction => {
                        return Err(err.within(&format!("Bundle.entry[{i}].request")));
                    }
                    Err(err) => {
                        results[i] = Some(EntryResult::Failed(err));
                        continue;
                    }
                };
                (id, false, m)
            }
            request @ (EntryRequest::Read { .. } | EntryRequest::Search { .. }) => {
                reads.push((i, e.resource_type, request));
                continue;
            }
        };
        let mut resource = e.resource.expect("write entries carry a resource");
        let must_resolve = e.must_resolve;
        let mut prepared = prepared[i].take();
        let outcome = async {
            if may_rewrite && resolve_references(tx, &mut resource, &rewrites, i).await? {
                prepared = None;
            }
            if !transaction {
                resolve_all(tx, &must_resolve).await?;
            }
            let one = One {
                resource_type: &e.resource_type,
                id,
                create_only,
                if_match,
                link: true,
                caller,
            };
            write_one(tx, ctx, one, resource, prepared, e.warnings, now).await
        }
        .await;
        match outcome {
            Ok(w) => {
                results[i] = Some(EntryResult::Written {
                    stored: w.stored,
                    status: w.status,
                    warnings: w.warnings,
                })
            }
            Err(err) if transaction => return Err(err),
            Err(err) => results[i] = Some(EntryResult::Failed(err)),
        }
        if transaction {
            // Checked once every entry is staged, since entries may refer to each other.
            deferred_checks.extend(must_resolve.into_iter().map(|mut c| {
                if let Some(to) = rewrites.get(&format!("{}/{}", c.resource_type, c.id))
                    && let Some((_, id)) = to.split_once('/')
                {
                    c.id = id.to_string();
                }
                c
            }));
        }
    }
    resolve_all(tx, &deferred_checks).await?;

    for (i, resource_type, request) in reads {
        let result = match request {
            EntryRequest::Read { id } => match tx.current(&resource_type, &id).await? {
                Some(s) => EntryResult::Read(s),
                None => EntryResult::Failed(not_found(&resource_type, &id)),
            },
            EntryRequest::Search { params } => {
                match search::parse_query(&resource_type, &params, false) {
                    Ok(q) => {
                        let page = tx.search(&q).await?;
                        EntryResult::Searched(bundle::searchset(base, &q, &page))
                    }
                    Err(err) => EntryResult::Failed(err),
                }
            }
            _ => unreachable!("only reads are deferred"),
        };
        if transaction && let EntryResult::Failed(err) = result {
            return Err(err);
        }
        results[i] = Some(result);
    }
    Ok(results
        .into_iter()
        .map(|r| r.expect("every entry has a result"))
        .collect())
}

/// Applies conditional-create rewrites and resolves conditional references
/// (`Patient?identifier=sys|val`) to the one resource they match.
async fn resolve_references(
    tx: &mut Tx<'_>,
    resource: &mut Value,
    rewrites: &HashMap<String, String>,
    entry: usize,
) -> Result<bool, FhirError> {
    let mut conditional = Vec::new();
    let mut changed = false;
    reference::for_each_reference_mut(resource, &mut |r| {
        if let Some(to) = rewrites.get(r.as_str()) {
            *r = to.clone();
            changed = true;
        } else if r.contains('?') {
            conditional.push(r.clone());
        }
    });
    if conditional.is_empty() {
        return Ok(changed);
    }
    let at = format!("Bundle.entry[{entry}].resource");
    let mut resolved = HashMap::new();
    for r in conditional {
        let Some(Target::Conditional {
            resource_type,
            query,
        }) = reference::parse(&r, None)
        else {
            return Err(FhirError::invalid(
                &at,
                format!("reference {r:?} is not Type?search"),
            ));
        };
        check_type(resource_type)?;
        let q = conditional_query(resource_type, query, &at)?;
        let ids = tx.search_ids(&q).await?;
        match ids.as_slice() {
            [id] => {
                resolved.insert(r.clone(), format!("{resource_type}/{id}"));
            }
            [] => {
                return Err(FhirError::Unprocessable(vec![Issue::error(
                    IssueCode::NotFound,
                    &at,
                    format!("conditional reference {r:?} matches no resource"),
                )]));
            }
            _ => {
                return Err(FhirError::MultipleMatches(format!(
                    "conditional reference {r:?} in {at} matches more than one resource"
                )));
            }
        }
    }
    reference::for_each_reference_mut(resource, &mut |r| {
        if let Some(to) = resolved.get(r.as_str()) {
            *r = to.clone();
        }
    });
    Ok(true)
}
