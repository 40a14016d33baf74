//! The HSDS tabular package: one CSV file per table (`services.csv`, `phones.csv`, …),
//! rows linked by `*_id` columns, reassembled into the nested JSON the HSDS API serves
//! (`service` with its `phones`, `organization`, `service_at_locations[].location`, …).
//!
//! Nesting follows the schemas: a field that is an array of entity C holds the rows of
//! C whose link column names this row (`service_id` under a service, `link_id` for
//! attributes, `resource_id` for metadata); an object field follows this row's own
//! link (`organization_id` → `organization`). Nested objects leave out their link
//! columns (the nesting says it); a top-level entity keeps a link column whose row is
//! missing, so nothing sent is lost. Cells are typed by the schema (a number column
//! becomes a JSON number; a cell that is not one stays text, for the schema check to
//! refuse); empty cells are left out.
//!
//! No IO: the caller reads the files.

use std::collections::HashMap;

use serde_json::{Map, Value};

use super::Kind;
use super::schema::{self, Ty};

/// The columns that link a row to another table's row.
const LINKS: [&str; 11] = [
    "organization_id",
    "service_id",
    "location_id",
    "service_at_location_id",
    "contact_id",
    "phone_id",
    "program_id",
    "link_id",
    "resource_id",
    "taxonomy_term_id",
    "taxonomy_id",
];

/// The entity a CSV file holds, from its name (`service_at_location.csv` and
/// `service_at_locations.csv` both; singular and plural names alike).
pub fn table_entity(file_name: &str) -> Option<&'static str> {
    let stem = file_name.strip_suffix(".csv")?.to_ascii_lowercase();
    const TABLES: [(&str, &str); 21] = [
        ("organizations", "organization"),
        ("services", "service"),
        ("locations", "location"),
        ("service_at_locations", "service_at_location"),
        ("phones", "phone"),
        ("schedules", "schedule"),
        ("service_areas", "service_area"),
        ("languages", "language"),
        ("funding", "funding"),
        ("cost_options", "cost_option"),
        ("programs", "program"),
        ("required_documents", "required_document"),
        ("contacts", "contact"),
        ("attributes", "attribute"),
        ("metadata", "metadata"),
        ("addresses", "address"),
        ("accessibility", "accessibility"),
        ("organization_identifiers", "organization_identifier"),
        ("taxonomies", "taxonomy"),
        ("taxonomy_terms", "taxonomy_term"),
        ("meta_table_descriptions", "meta_table_description"),
    ];
    TABLES
        .iter()
        .find(|(plural, single)| stem == *plural || stem == *single)
        .map(|(_, single)| *single)
}

/// A row of a table, typed, with where it came from.
#[derive(Debug, Clone)]
pub struct Row {
    pub fields: Map<String, Value>,
    /// `file:line`.
    pub source: String,
}

impl Row {
    fn get(&self, column: &str) -> Option<&str> {
        self.fields.get(column).and_then(Value::as_str)
    }
}

/// A row that could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadRow {
    pub source: String,
    pub reason: String,
}

/// A CSV record's cells and the line it starts on.
pub type Record = (usize, Vec<String>);

/// The records of a CSV text (RFC 4180: quoted fields with doubled quotes, CRLF or LF,
/// a byte-order mark ignored); an error is the line and what is wrong.
pub fn parse_csv(text: &str) -> Result<Vec<Record>, (usize, String)> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut records = Vec::new();
    let mut record = Vec::new();
    let mut field = String::new();
    let mut chars = text.chars().peekable();
    let (mut line, mut start) = (1, 1);
    let mut quoted = false;
    let mut any = false;
    while let Some(c) = chars.next() {
        any = true;
        if quoted {
            match c {
                '"' if chars.peek() == Some(&'"') => {
                    chars.next();
                    field.push('"');
                }
                '"' => quoted = false,
                '\n' => {
                    line += 1;
                    field.push(c);
                }
                _ => field.push(c),
            }
            continue;
        }
        match c {
            '"' if field.is_empty() => quoted = true,
            ',' => record.push(std::mem::take(&mut field)),
            '\r' if chars.peek() == Some(&'\n') => {}
            '\n' => {
                record.push(std::mem::take(&mut field));
                records.push((start, std::mem::take(&mut record)));
                line += 1;
                start = line;
                any = false;
            }
            _ => field.push(c),
        }
    }
    if quoted {
        return Err((start, "a quoted field is not closed".into()));
    }
    if any {
        record.push(field);
        records.push((start, record));
    }
    // Blank lines are not rows.
    records.retain(|(_, r)| !(r.len() == 1 && r[0].is_empty()));
    Ok(records)
}

/// Typed rows of one table (`entity`) from its CSV text; rows that cannot be read are
/// returned apart.
pub fn rows(file: &str, entity: &str, text: &str) -> (Vec<Row>, Vec<BadRow>) {
    let records = match parse_csv(text) {
        Ok(r) => r,
        Err((line, reason)) => {
            return (
                Vec::new(),
                vec![BadRow {
                    source: format!("{file}:{line}"),
                    reason,
                }],
            );
        }
    };
    let mut records = records.into_iter();
    let Some((_, header)) = records.next() else {
        return (Vec::new(), Vec::new());
    };
    let rules = schema::entity(entity);
    let (mut good, mut bad) = (Vec::new(), Vec::new());
    for (line, cells) in records {
        let source = format!("{file}:{line}");
        if cells.len() > header.len() {
            bad.push(BadRow {
                source,
                reason: format!(
                    "{} cells, but the header names {} columns",
                    cells.len(),
                    header.len()
                ),
            });
            continue;
        }
        let mut fields = Map::new();
        // A short row's missing trailing cells are empty.
        for (column, cell) in header.iter().zip(cells) {
            if cell.is_empty() {
                continue;
            }
            let ty = rules
                .and_then(|r| r.field(column))
                .map_or(Ty::Str, |f| f.ty);
            fields.insert(column.trim().to_string(), typed(ty, cell));
        }
        good.push(Row { fields, source });
    }
    (good, bad)
}

/// A cell as its column's JSON type; text when it is not one (the schema check names it).
fn typed(ty: Ty, cell: String) -> Value {
    match ty {
        Ty::Str => Value::String(cell),
        Ty::Number | Ty::Integer | Ty::Bool | Ty::Array(_) | Ty::Object(_) => {
            match serde_json::from_str::<Value>(cell.trim()) {
                Ok(v)
                    if (matches!(ty, Ty::Number | Ty::Integer) && v.is_number())
                        || (ty == Ty::Bool && v.is_boolean())
                        || (matches!(ty, Ty::Array(_)) && v.is_array())
                        || (matches!(ty, Ty::Object(_)) && v.is_object()) =>
                {
                    v
                }
                _ => Value::String(cell),
            }
        }
    }
}

/// The tables of a package, indexed by their link columns.
pub struct Package {
    tables: HashMap<&'static str, Vec<Row>>,
    /// (entity, column) → column value → row indexes.
    index: HashMap<(&'static str, &'static str), HashMap<String, Vec<usize>>>,
}

/// An entity assembled from the package, and the row it came from.
pub struct Assembled {
    pub kind: Kind,
    pub body: Value,
    pub source: String,
}

impl Package {
    pub fn new(tables: HashMap<&'static str, Vec<Row>>) -> Package {
        let mut index: HashMap<(&'static str, &'static str), HashMap<String, Vec<usize>>> =
            HashMap::new();
        for (entity, rows) in &tables {
            for column in LINKS.iter().copied().chain(["id"]) {
                let mut by_value: HashMap<String, Vec<usize>> = HashMap::new();
                for (i, row) in rows.iter().enumerate() {
                    if let Some(v) = row.get(column) {
                        by_value.entry(v.to_string()).or_default().push(i);
                    }
                }
                if !by_value.is_empty() {
                    index.insert((entity, column), by_value);
                }
            }
        }
        Package { tables, index }
    }

    fn linked(&self, entity: &str, column: &str, value: &str) -> impl Iterator<Item = &Row> {
        let rows = self.tables.get(entity);
        self.index
            .get(&(table_key(entity), column_key(column)))
            .and_then(|m| m.get(value))
            .into_iter()
            .flatten()
            .filter_map(move |&i| rows.and_then(|r| r.get(i)))
    }

    /// Every top-level entity of the package, nested as the API serves it, in table
    /// order (organizations, services, locations, services at locations, taxonomies,
    /// taxonomy terms).
    pub fn entities(&self) -> Vec<Assembled> {
        let mut out = Vec::new();
        for kind in Kind::ALL {
            for row in self.tables.get(kind.as_str()).into_iter().flatten() {
                let mut body = self.build(kind.as_str(), row, true, &[]);
                match kind {
                    // `/organizations/{id}` lists the organisation's services, each
                    // without the organisation again.
                    Kind::Organization => {
                        if let Some(id) = row.get("id") {
                            let services: Vec<Value> = self
                                .linked("service", "organization_id", id)
                                .map(|s| self.build("service", s, false, &["organization"]))
                                .collect();
                            if !services.is_empty() {
                                insert(&mut body, "services", Value::Array(services));
                            }
                        }
                    }
                    // `/service_at_locations/{id}` carries its service, without the
                    // service's own list of locations.
                    Kind::ServiceAtLocation => {
                        if let Some(service) = row
                            .get("service_id")
                            .and_then(|id| self.linked("service", "id", id).next())
                        {
                            let nested =
                                self.build("service", service, false, &["service_at_locations"]);
                            insert(&mut body, "service", nested);
                            if let Some(o) = body.as_object_mut() {
                                o.remove("service_id");
                            }
                        }
                    }
                    _ => {}
                }
                out.push(Assembled {
                    kind,
                    body,
                    source: row.source.clone(),
                });
            }
        }
        out
    }

    /// `row` of `entity` with its nested parts. `top`: the entity is served on its own
    /// (keeps the link columns no nested part stands for).
    fn build(&self, entity: &str, row: &Row, top: bool, leave_out: &[&str]) -> Value {
        let mut out = Map::new();
        for (k, v) in &row.fields {
            if top || !LINKS.contains(&k.as_str()) {
                out.insert(k.clone(), v.clone());
            }
        }
        let Some(rules) = schema::entity(entity) else {
            return Value::Object(out);
        };
        let id = row.get("id");
        for field in rules.fields {
            if leave_out.contains(&field.name) {
                continue;
            }
            match field.ty {
                Ty::Array(child) => {
                    let Some(id) = id else { continue };
                    let column = match child {
                        "attribute" => "link_id".to_string(),
                        "metadata" => "resource_id".to_string(),
                        _ => format!("{entity}_id"),
                    };
                    let items: Vec<Value> = self
                        .linked(child, &column, id)
                        .map(|r| self.build(child, r, false, &[]))
                        .collect();
                    if !items.is_empty() {
                        out.insert(field.name.to_string(), Value::Array(items));
                    }
                }
                Ty::Object(child) => {
                    let link = match field.name {
                        "taxonomy_detail" => "taxonomy_id".to_string(),
                        name => format!("{name}_id"),
                    };
                    if let Some(target) = row
                        .get(&link)
                        .and_then(|v| self.linked(child, "id", v).next())
                    {
                        out.insert(
                            field.name.to_string(),
                            self.build(child, target, false, &[]),
                        );
                        out.remove(&link);
                    }
                }
                _ => {}
            }
        }
        Value::Object(out)
    }
}

fn insert(body: &mut Value, key: &str, value: Value) {
    if let Some(o) = body.as_object_mut() {
        o.insert(key.to_string(), value);
    }
}

/// The static name of an entity (index keys borrow from the schema table).
fn table_key(entity: &str) -> &'static str {
    schema::entity(entity).map_or("", |e| e.name)
}

fn column_key(column: &str) -> &'static str {
    LINKS
        .iter()
        .copied()
        .chain(["id"])
        .find(|c| *c == column)
        .unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quotes_crlf_and_ragged_rows() {
        let text = "id,number,description\r\n1,\"\"\"+44 1\"\"\",\"a, b\r\nc\"\r\n2,3\r\n";
        let records = parse_csv(text).unwrap();
        assert_eq!(
            records,
            vec![
                (1, vec!["id".into(), "number".into(), "description".into()]),
                (2, vec!["1".into(), "\"+44 1\"".into(), "a, b\r\nc".into()]),
                (4, vec!["2".into(), "3".into()]),
            ]
        );
        let (rows, bad) = rows("phones.csv", "phone", text);
        assert!(bad.is_empty());
        assert_eq!(rows[1].fields["number"], "3");
        assert_eq!(rows[1].source, "phones.csv:4");
        assert!(!rows[1].fields.contains_key("description"));
        assert!(parse_csv("a,\"b\n").is_err());
    }

    #[test]
    fn cells_take_their_column_type() {
        let (rows, _) = rows(
            "services.csv",
            "service",
            "id,name,minimum_age,maximum_age\n1,x,12,old\n",
        );
        assert_eq!(rows[0].fields["minimum_age"], serde_json::json!(12));
        assert_eq!(rows[0].fields["maximum_age"], "old");
    }

    #[test]
    fn rows_nest_by_their_links() {
        let table =
            |entity: &'static str, file: &str, text: &str| (entity, rows(file, entity, text).0);
        let package = Package::new(HashMap::from([
            table("organization", "o.csv", "id,name,description\no1,Org,d\n"),
            table(
                "service",
                "s.csv",
                "id,organization_id,name,status\ns1,o1,Food,active\ns2,o9,Other,active\n",
            ),
            table(
                "phone",
                "p.csv",
                "id,service_id,organization_id,number\np1,s1,o1,555\n",
            ),
        ]));
        let all = package.entities();
        let service = &all.iter().find(|e| e.body["id"] == "s1").unwrap().body;
        assert_eq!(service["organization"]["name"], "Org");
        assert_eq!(service["organization"]["phones"][0]["number"], "555");
        assert!(service["phones"][0].get("service_id").is_none());
        assert!(service.get("organization_id").is_none());
        // A link to a missing row is kept on the entity served on its own.
        let orphan = &all.iter().find(|e| e.body["id"] == "s2").unwrap().body;
        assert_eq!(orphan["organization_id"], "o9");
        let org = &all.iter().find(|e| e.body["id"] == "o1").unwrap().body;
        assert_eq!(org["services"][0]["id"], "s1");
        assert!(org["services"][0].get("organization").is_none());
    }
}
