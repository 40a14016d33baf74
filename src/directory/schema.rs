//! The HSDS 3.0 schemas' rules that an import checks: for each entity, its fields' JSON
//! types, which are required and the enumerations. Taken from the entity schemas of
//! openreferral/specification (`schema/*.json`, branch 3.0); nested parts (`phones`,
//! `schedules`, …) are checked by their own entity's rules. Formats (`uuid`, `email`,
//! `uri`) are not checked: real directories use other ids, and the examples rely on
//! JSON Schema's default that a format is an annotation. Unknown fields are kept (HSDS
//! allows them; later versions add some).
//!
//! No IO.

use serde_json::Value;

/// A field's JSON type; arrays and objects name the entity of their items.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ty {
    Str,
    Number,
    Integer,
    Bool,
    Array(&'static str),
    Object(&'static str),
}

#[derive(Debug)]
pub struct Field {
    pub name: &'static str,
    pub ty: Ty,
    pub required: bool,
    pub one_of: &'static [&'static str],
}

#[derive(Debug)]
pub struct Entity {
    pub name: &'static str,
    pub fields: &'static [Field],
}

impl Entity {
    pub fn field(&self, name: &str) -> Option<&'static Field> {
        self.fields.iter().find(|f| f.name == name)
    }
}

const fn f(name: &'static str, ty: Ty, required: bool, one_of: &'static [&'static str]) -> Field {
    Field {
        name,
        ty,
        required,
        one_of,
    }
}

/// The rules of one HSDS entity (`service`, `phone`, …).
pub fn entity(name: &str) -> Option<&'static Entity> {
    ENTITIES.iter().find(|e| e.name == name)
}

/// Why a value breaks its entity's rules: the JSON Pointer of the field and the rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub pointer: String,
    pub rule: String,
}

/// The first rule `value` (an `entity`) breaks, if any.
pub fn check(entity_name: &str, value: &Value) -> Result<(), Violation> {
    let Some(rules) = entity(entity_name) else {
        return Ok(());
    };
    check_at(rules, value, &mut String::new())
}

fn check_at(rules: &Entity, value: &Value, at: &mut String) -> Result<(), Violation> {
    let violation = |at: &str, rule: String| Violation {
        pointer: if at.is_empty() {
            "/".into()
        } else {
            at.to_string()
        },
        rule,
    };
    let Some(object) = value.as_object() else {
        return Err(violation(at, format!("must be an object ({})", rules.name)));
    };
    for field in rules.fields {
        let len = at.len();
        at.push('/');
        at.push_str(field.name);
        let result = match object.get(field.name) {
            None | Some(Value::Null) if field.required => {
                Err(violation(at, format!("is required in {}", rules.name)))
            }
            None | Some(Value::Null) => Ok(()),
            Some(v) => check_field(field, v, at),
        };
        at.truncate(len);
        result?;
    }
    Ok(())
}

fn check_field(field: &Field, v: &Value, at: &mut String) -> Result<(), Violation> {
    let wrong = |at: &str, what: &str| {
        Err(Violation {
            pointer: at.to_string(),
            rule: format!("must be {what}"),
        })
    };
    match field.ty {
        Ty::Str => {
            let Some(s) = v.as_str() else {
                return wrong(at, "a string");
            };
            if !field.one_of.is_empty() && !field.one_of.contains(&s) {
                return wrong(at, &format!("one of {}", field.one_of.join(", ")));
            }
            Ok(())
        }
        Ty::Number if !v.is_number() => wrong(at, "a number"),
        Ty::Integer if !(v.is_i64() || v.is_u64()) => wrong(at, "an integer"),
        Ty::Bool if !v.is_boolean() => wrong(at, "true or false"),
        Ty::Array(item) => {
            let Some(items) = v.as_array() else {
                return wrong(at, "an array");
            };
            let rules = entity(item);
            for (i, item) in items.iter().enumerate() {
                let len = at.len();
                at.push_str(&format!("/{i}"));
                if let Some(rules) = rules {
                    check_at(rules, item, at)?;
                }
                at.truncate(len);
            }
            Ok(())
        }
        Ty::Object(name) => match entity(name) {
            Some(rules) => check_at(rules, v, at),
            None => Ok(()),
        },
        _ => Ok(()),
    }
}

static ENTITIES: &[Entity] = &[
    Entity {
        name: "accessibility",
        fields: &[
            f("id", Ty::Str, true, &[]),
            f("location_id", Ty::Str, false, &[]),
            f("description", Ty::Str, false, &[]),
            f("details", Ty::Str, false, &[]),
            f("url", Ty::Str, false, &[]),
            f("attributes", Ty::Array("attribute"), false, &[]),
            f("metadata", Ty::Array("metadata"), false, &[]),
        ],
    },
    Entity {
        name: "address",
        fields: &[
            f("id", Ty::Str, true, &[]),
            f("location_id", Ty::Str, false, &[]),
            f("attention", Ty::Str, false, &[]),
            f("address_1", Ty::Str, true, &[]),
            f("address_2", Ty::Str, false, &[]),
            f("city", Ty::Str, true, &[]),
            f("region", Ty::Str, false, &[]),
            f("state_province", Ty::Str, true, &[]),
            f("postal_code", Ty::Str, true, &[]),
            f("country", Ty::Str, true, &[]),
            f(
                "address_type",
                Ty::Str,
                true,
                &["physical", "postal", "virtual"],
            ),
            f("attributes", Ty::Array("attribute"), false, &[]),
            f("metadata", Ty::Array("metadata"), false, &[]),
        ],
    },
    Entity {
        name: "attribute",
        fields: &[
            f("id", Ty::Str, true, &[]),
            f("link_id", Ty::Str, false, &[]),
            f("taxonomy_term_id", Ty::Str, false, &[]),
            f("link_type", Ty::Str, false, &[]),
            f("link_entity", Ty::Str, false, &[]),
            f("value", Ty::Str, false, &[]),
            f("taxonomy_term", Ty::Object("taxonomy_term"), false, &[]),
            f("metadata", Ty::Array("metadata"), false, &[]),
        ],
    },
    Entity {
        name: "contact",
        fields: &[
            f("id", Ty::Str, true, &[]),
            f("organization_id", Ty::Str, false, &[]),
            f("service_id", Ty::Str, false, &[]),
            f("service_at_location_id", Ty::Str, false, &[]),
            f("location_id", Ty::Str, false, &[]),
            f("name", Ty::Str, false, &[]),
            f("title", Ty::Str, false, &[]),
            f("department", Ty::Str, false, &[]),
            f("email", Ty::Str, false, &[]),
            f("phones", Ty::Array("phone"), false, &[]),
            f("attributes", Ty::Array("attribute"), false, &[]),
            f("metadata", Ty::Array("metadata"), false, &[]),
        ],
    },
    Entity {
        name: "cost_option",
        fields: &[
            f("id", Ty::Str, true, &[]),
            f("service_id", Ty::Str, false, &[]),
            f("valid_from", Ty::Str, false, &[]),
            f("valid_to", Ty::Str, false, &[]),
            f("option", Ty::Str, false, &[]),
            f("currency", Ty::Str, false, &[]),
            f("amount", Ty::Number, false, &[]),
            f("amount_description", Ty::Str, false, &[]),
            f("attributes", Ty::Array("attribute"), false, &[]),
            f("metadata", Ty::Array("metadata"), false, &[]),
        ],
    },
    Entity {
        name: "funding",
        fields: &[
            f("id", Ty::Str, true, &[]),
            f("organization_id", Ty::Str, false, &[]),
            f("service_id", Ty::Str, false, &[]),
            f("source", Ty::Str, false, &[]),
            f("attributes", Ty::Array("attribute"), false, &[]),
            f("metadata", Ty::Array("metadata"), false, &[]),
        ],
    },
    Entity {
        name: "language",
        fields: &[
            f("id", Ty::Str, true, &[]),
            f("service_id", Ty::Str, false, &[]),
            f("location_id", Ty::Str, false, &[]),
            f("phone_id", Ty::Str, false, &[]),
            f("name", Ty::Str, false, &[]),
            f("code", Ty::Str, false, &[]),
            f("note", Ty::Str, false, &[]),
            f("attributes", Ty::Array("attribute"), false, &[]),
            f("metadata", Ty::Array("metadata"), false, &[]),
        ],
    },
    Entity {
        name: "location",
        fields: &[
            f("id", Ty::Str, true, &[]),
            f(
                "location_type",
                Ty::Str,
                true,
                &["physical", "postal", "virtual"],
            ),
            f("url", Ty::Str, false, &[]),
            f("organization_id", Ty::Str, false, &[]),
            f("name", Ty::Str, false, &[]),
            f("alternate_name", Ty::Str, false, &[]),
            f("description", Ty::Str, false, &[]),
            f("transportation", Ty::Str, false, &[]),
            f("latitude", Ty::Number, false, &[]),
            f("longitude", Ty::Number, false, &[]),
            f("external_identifier", Ty::Str, false, &[]),
            f("external_identifier_type", Ty::Str, false, &[]),
            f("languages", Ty::Array("language"), false, &[]),
            f("addresses", Ty::Array("address"), false, &[]),
            f("contacts", Ty::Array("contact"), false, &[]),
            f("accessibility", Ty::Array("accessibility"), false, &[]),
            f("phones", Ty::Array("phone"), false, &[]),
            f("schedules", Ty::Array("schedule"), false, &[]),
            f("attributes", Ty::Array("attribute"), false, &[]),
            f("metadata", Ty::Array("metadata"), false, &[]),
        ],
    },
    Entity {
        name: "metadata",
        fields: &[
            f("id", Ty::Str, true, &[]),
            f("resource_id", Ty::Str, false, &[]),
            f("resource_type", Ty::Str, false, &[]),
            f("last_action_date", Ty::Str, true, &[]),
            f("last_action_type", Ty::Str, true, &[]),
            f("field_name", Ty::Str, true, &[]),
            f("previous_value", Ty::Str, true, &[]),
            f("replacement_value", Ty::Str, true, &[]),
            f("updated_by", Ty::Str, true, &[]),
        ],
    },
    Entity {
        name: "organization",
        fields: &[
            f("id", Ty::Str, true, &[]),
            f("name", Ty::Str, true, &[]),
            f("alternate_name", Ty::Str, false, &[]),
            f("description", Ty::Str, true, &[]),
            f("email", Ty::Str, false, &[]),
            f("website", Ty::Str, false, &[]),
            f("tax_status", Ty::Str, false, &[]),
            f("tax_id", Ty::Str, false, &[]),
            f("year_incorporated", Ty::Number, false, &[]),
            f("legal_status", Ty::Str, false, &[]),
            f("logo", Ty::Str, false, &[]),
            f("uri", Ty::Str, false, &[]),
            f("parent_organization_id", Ty::Str, false, &[]),
            f("funding", Ty::Array("funding"), false, &[]),
            f("contacts", Ty::Array("contact"), false, &[]),
            f("phones", Ty::Array("phone"), false, &[]),
            f("locations", Ty::Array("location"), false, &[]),
            f("programs", Ty::Array("program"), false, &[]),
            f(
                "organization_identifiers",
                Ty::Array("organization_identifier"),
                false,
                &[],
            ),
            f("attributes", Ty::Array("attribute"), false, &[]),
            f("metadata", Ty::Array("metadata"), false, &[]),
        ],
    },
    Entity {
        name: "organization_identifier",
        fields: &[
            f("id", Ty::Str, true, &[]),
            f("organization_id", Ty::Str, false, &[]),
            f("identifier_scheme", Ty::Str, false, &[]),
            f("identifier_type", Ty::Str, true, &[]),
            f("identifier", Ty::Str, true, &[]),
            f("attributes", Ty::Array("attribute"), false, &[]),
            f("metadata", Ty::Array("metadata"), false, &[]),
        ],
    },
    Entity {
        name: "phone",
        fields: &[
            f("id", Ty::Str, true, &[]),
            f("location_id", Ty::Str, false, &[]),
            f("service_id", Ty::Str, false, &[]),
            f("organization_id", Ty::Str, false, &[]),
            f("contact_id", Ty::Str, false, &[]),
            f("service_at_location_id", Ty::Str, false, &[]),
            f("number", Ty::Str, true, &[]),
            f("extension", Ty::Number, false, &[]),
            f("type", Ty::Str, false, &[]),
            f("description", Ty::Str, false, &[]),
            f("languages", Ty::Array("language"), false, &[]),
            f("attributes", Ty::Array("attribute"), false, &[]),
            f("metadata", Ty::Array("metadata"), false, &[]),
        ],
    },
    Entity {
        name: "program",
        fields: &[
            f("id", Ty::Str, true, &[]),
            f("organization_id", Ty::Str, false, &[]),
            f("name", Ty::Str, true, &[]),
            f("alternate_name", Ty::Str, false, &[]),
            f("description", Ty::Str, true, &[]),
            f("attributes", Ty::Array("attribute"), false, &[]),
            f("metadata", Ty::Array("metadata"), false, &[]),
        ],
    },
    Entity {
        name: "required_document",
        fields: &[
            f("id", Ty::Str, true, &[]),
            f("service_id", Ty::Str, false, &[]),
            f("document", Ty::Str, false, &[]),
            f("uri", Ty::Str, false, &[]),
            f("attributes", Ty::Array("attribute"), false, &[]),
            f("metadata", Ty::Array("metadata"), false, &[]),
        ],
    },
    Entity {
        name: "schedule",
        fields: &[
            f("id", Ty::Str, true, &[]),
            f("service_id", Ty::Str, false, &[]),
            f("location_id", Ty::Str, false, &[]),
            f("service_at_location_id", Ty::Str, false, &[]),
            f("valid_from", Ty::Str, false, &[]),
            f("valid_to", Ty::Str, false, &[]),
            f("dtstart", Ty::Str, false, &[]),
            f("timezone", Ty::Number, false, &[]),
            f("until", Ty::Str, false, &[]),
            f("count", Ty::Number, false, &[]),
            f(
                "wkst",
                Ty::Str,
                false,
                &["MO", "TU", "WE", "TH", "FR", "SA", "SU"],
            ),
            f("freq", Ty::Str, false, &["WEEKLY", "MONTHLY"]),
            f("interval", Ty::Number, false, &[]),
            f("byday", Ty::Str, false, &[]),
            f("byweekno", Ty::Str, false, &[]),
            f("bymonthday", Ty::Str, false, &[]),
            f("byyearday", Ty::Str, false, &[]),
            f("description", Ty::Str, false, &[]),
            f("opens_at", Ty::Str, false, &[]),
            f("closes_at", Ty::Str, false, &[]),
            f("schedule_link", Ty::Str, false, &[]),
            f("attending_type", Ty::Str, false, &[]),
            f("notes", Ty::Str, false, &[]),
            f("attributes", Ty::Array("attribute"), false, &[]),
            f("metadata", Ty::Array("metadata"), false, &[]),
        ],
    },
    Entity {
        name: "service",
        fields: &[
            f("id", Ty::Str, true, &[]),
            f("organization_id", Ty::Str, false, &[]),
            f("program_id", Ty::Str, false, &[]),
            f("name", Ty::Str, true, &[]),
            f("alternate_name", Ty::Str, false, &[]),
            f("description", Ty::Str, false, &[]),
            f("url", Ty::Str, false, &[]),
            f("email", Ty::Str, false, &[]),
            f(
                "status",
                Ty::Str,
                true,
                &["active", "inactive", "defunct", "temporarily closed"],
            ),
            f("interpretation_services", Ty::Str, false, &[]),
            f("application_process", Ty::Str, false, &[]),
            f("fees_description", Ty::Str, false, &[]),
            f("wait_time", Ty::Str, false, &[]),
            f("fees", Ty::Str, false, &[]),
            f("accreditations", Ty::Str, false, &[]),
            f("eligibility_description", Ty::Str, false, &[]),
            f("minimum_age", Ty::Number, false, &[]),
            f("maximum_age", Ty::Number, false, &[]),
            f("assured_date", Ty::Str, false, &[]),
            f("assurer_email", Ty::Str, false, &[]),
            f("licenses", Ty::Str, false, &[]),
            f("alert", Ty::Str, false, &[]),
            f("last_modified", Ty::Str, false, &[]),
            f("phones", Ty::Array("phone"), false, &[]),
            f("schedules", Ty::Array("schedule"), false, &[]),
            f("service_areas", Ty::Array("service_area"), false, &[]),
            f(
                "service_at_locations",
                Ty::Array("service_at_location"),
                false,
                &[],
            ),
            f("languages", Ty::Array("language"), false, &[]),
            f("organization", Ty::Object("organization"), false, &[]),
            f("funding", Ty::Array("funding"), false, &[]),
            f("cost_options", Ty::Array("cost_option"), false, &[]),
            f("program", Ty::Object("program"), false, &[]),
            f(
                "required_documents",
                Ty::Array("required_document"),
                false,
                &[],
            ),
            f("contacts", Ty::Array("contact"), false, &[]),
            f("attributes", Ty::Array("attribute"), false, &[]),
            f("metadata", Ty::Array("metadata"), false, &[]),
        ],
    },
    Entity {
        name: "service_area",
        fields: &[
            f("id", Ty::Str, true, &[]),
            f("service_id", Ty::Str, false, &[]),
            f("name", Ty::Str, false, &[]),
            f("description", Ty::Str, false, &[]),
            f("extent", Ty::Str, false, &[]),
            f("extent_type", Ty::Str, false, &[]),
            f("uri", Ty::Str, false, &[]),
            f("attributes", Ty::Array("attribute"), false, &[]),
            f("metadata", Ty::Array("metadata"), false, &[]),
        ],
    },
    Entity {
        name: "service_at_location",
        fields: &[
            f("id", Ty::Str, true, &[]),
            f("service_id", Ty::Str, false, &[]),
            f("location_id", Ty::Str, false, &[]),
            f("description", Ty::Str, false, &[]),
            f("contacts", Ty::Array("contact"), false, &[]),
            f("phones", Ty::Array("phone"), false, &[]),
            f("schedules", Ty::Array("schedule"), false, &[]),
            f("location", Ty::Object("location"), false, &[]),
            f("attributes", Ty::Array("attribute"), false, &[]),
            f("metadata", Ty::Array("metadata"), false, &[]),
        ],
    },
    Entity {
        name: "taxonomy",
        fields: &[
            f("id", Ty::Str, true, &[]),
            f("name", Ty::Str, true, &[]),
            f("description", Ty::Str, true, &[]),
            f("uri", Ty::Str, false, &[]),
            f("version", Ty::Str, false, &[]),
            f("metadata", Ty::Array("metadata"), false, &[]),
        ],
    },
    Entity {
        name: "taxonomy_term",
        fields: &[
            f("id", Ty::Str, true, &[]),
            f("code", Ty::Str, false, &[]),
            f("name", Ty::Str, true, &[]),
            f("description", Ty::Str, true, &[]),
            f("parent_id", Ty::Str, false, &[]),
            f("taxonomy", Ty::Str, false, &[]),
            f("taxonomy_detail", Ty::Object("taxonomy"), false, &[]),
            f("language", Ty::Str, false, &[]),
            f("taxonomy_id", Ty::Str, false, &[]),
            f("term_uri", Ty::Str, false, &[]),
            f("metadata", Ty::Array("metadata"), false, &[]),
        ],
    },
];

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_violation_names_the_field_and_the_rule() {
        let v = check("service", &json!({"id": "s", "name": "n"})).unwrap_err();
        assert_eq!(
            (v.pointer.as_str(), v.rule.as_str()),
            ("/status", "is required in service")
        );
        let v = check(
            "service",
            &json!({"id": "s", "name": "n", "status": "open", "phones": []}),
        )
        .unwrap_err();
        assert_eq!(v.pointer, "/status");
        assert!(v.rule.starts_with("must be one of active"), "{}", v.rule);
        let v = check(
            "service",
            &json!({"id": "s", "name": "n", "status": "active",
                    "phones": [{"id": "p", "number": "1"}, {"id": "q", "number": 2}]}),
        )
        .unwrap_err();
        assert_eq!(
            (v.pointer.as_str(), v.rule.as_str()),
            ("/phones/1/number", "must be a string")
        );
        let v = check(
            "service",
            &json!({"id": "s", "name": "n", "status": "active", "minimum_age": "12"}),
        )
        .unwrap_err();
        assert_eq!(
            (v.pointer.as_str(), v.rule.as_str()),
            ("/minimum_age", "must be a number")
        );
    }

    #[test]
    fn unknown_fields_and_absent_optional_ones_pass() {
        check(
            "organization",
            &json!({"id": "o", "name": "n", "description": "d", "x_local": [1]}),
        )
        .unwrap();
    }
}
