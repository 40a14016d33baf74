//! The organisations referrals are routed to: those in the config file, and those
//! made CBO tenants at run time by registering a credential for them. Shared by the
//! FHIR engine (routing Task.owner) and the CBO face (who the caller is); refreshed
//! from the store so that a registration by an operator command reaches every process.
//! A new tenant's existing Tasks are adopted as referrals once, by the engine
//! (`Fhir::adopt`, recorded in `tenants.adopted_at`), when `startup`'s refresh loop
//! (every 500 ms) finds it.

use std::sync::{Arc, RwLock};

use crate::config::{IdentifierConfig, OrganizationConfig, OrganizationKind};
use crate::store::{Store, StoreError, TenantRow};

#[derive(Clone, Debug, Default)]
pub struct Tenants {
    configured: Arc<Vec<OrganizationConfig>>,
    all: Arc<RwLock<Arc<Vec<OrganizationConfig>>>>,
}

impl Tenants {
    pub fn new(configured: Vec<OrganizationConfig>) -> Tenants {
        let configured = Arc::new(configured);
        Tenants {
            all: Arc::new(RwLock::new(configured.clone())),
            configured,
        }
    }

    /// Every known organisation; configured ones first.
    pub fn all(&self) -> Arc<Vec<OrganizationConfig>> {
        self.all.read().expect("poisoned").clone()
    }

    /// The CBO tenant with this id.
    pub fn cbo(&self, id: &str) -> Option<OrganizationConfig> {
        self.all()
            .iter()
            .find(|o| o.id == id && o.kind == OrganizationKind::Cbo)
            .cloned()
    }

    pub fn name_of(&self, id: &str) -> String {
        self.all()
            .iter()
            .find(|o| o.id == id)
            .map_or_else(|| id.to_string(), |o| o.name.clone())
    }

    /// Reads the registered tenants; true when the set changed.
    pub async fn refresh(&self, store: &Store) -> Result<bool, StoreError> {
        let registered = store.tenants().await?;
        let mut all: Vec<OrganizationConfig> = self.configured.as_ref().clone();
        for row in registered {
            if !all.iter().any(|o| o.id == row.organization_id) {
                all.push(from_row(&row));
            }
        }
        let mut current = self.all.write().expect("poisoned");
        if **current == all {
            return Ok(false);
        }
        *current = Arc::new(all);
        Ok(true)
    }
}

fn from_row(row: &TenantRow) -> OrganizationConfig {
    let identifiers: Vec<serde_json::Value> =
        serde_json::from_str(&row.identifiers).unwrap_or_default();
    OrganizationConfig {
        id: row.organization_id.clone(),
        name: row.name.clone(),
        kind: OrganizationKind::Cbo,
        identifiers: identifiers
            .iter()
            .filter_map(|i| {
                Some(IdentifierConfig {
                    system: i.get("system")?.as_str()?.to_string(),
                    value: i.get("value")?.as_str()?.to_string(),
                })
            })
            .collect(),
    }
}
