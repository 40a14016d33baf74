#!/usr/bin/env python3
"""The official HSDS 3.0 OpenAPI document, made checkable offline against our /hsds/.

usage: hsds_openapi.py SPEC_SCHEMA_DIR OUT.json [--example-id PATH=ID ...]
                        [--sdoh-domains mappings/directory/domains.toml]

SPEC_SCHEMA_DIR is tests/fixtures/hsds/spec/schema: Open Referral's `openapi.json` and
the entity schemas (`service.json`, ...), unchanged. The document names its response
bodies by absolute URLs of the `compiled/` schemas (2-3.5 MB each: the entity schemas
with every `$ref` inlined), which we neither fetch nor keep. This step writes one
self-contained document instead; everything else in it stays as upstream wrote it:

- every entity schema becomes `#/components/schemas/<name>` and its relative `$ref`s
  (`"attribute.json"`) point there;
- `compiled/service.json`, `compiled/organization.json` -> the entity schemas, as the
  compiled ones are, i.e. with the nesting the compiled ones add: an organization's
  `services` (array of service) and a service-at-location's `service`;
- `compiled/<x>_list.json` (a list item) -> `<x>_list`: the entity's one-to-one fields
  (no arrays), with the nested objects the compiled list schemas keep (a service's
  `organization` and `program`; a service-at-location's `location` and `service`), each
  as its own one-to-one fields;
- `/service_at_locations/{id}` answers a service-at-location, not `compiled/service.json`
  (an upstream bug: the official example fails it; fixed upstream in PR #574);
- the answers our API gives that the document does not declare: 401 (no or a bad
  bearer token, on every path but `/`) and 404 (no such id), both `{"error": "..."}`,
  and the bearer scheme itself;
- `--example-id services=ID` adds ID as the example of `/services/{id}`'s path
  parameter, so that the examples phase reads entities that exist;
- `--sdoh-domains FILE` declares our one extension, `sdoh_domain` on `/services` and
  `/service_at_locations` (search by need; the document allows parameters it does not
  list), with the domains FILE has rules for, and its 400 for any other.
"""

import argparse
import copy
import json
import pathlib
import sys
import tomllib

REMOTE = "https://raw.githubusercontent.com/openreferral/specification/3.0/schema/"
ENTITIES = [
    "accessibility",
    "address",
    "attribute",
    "contact",
    "cost_option",
    "funding",
    "language",
    "location",
    "metadata",
    "organization",
    "organization_identifier",
    "phone",
    "program",
    "required_document",
    "schedule",
    "service",
    "service_area",
    "service_at_location",
    "taxonomy",
    "taxonomy_term",
]
ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {"error": {"type": "string"}},
}


def ref(name):
    return {"$ref": "#/components/schemas/" + name}


def local_refs(node):
    """Relative entity refs ("phone.json") -> component refs, in place."""
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.endswith(".json") and "/" not in ref:
            node["$ref"] = "#/components/schemas/" + ref[: -len(".json")]
        for v in node.values():
            local_refs(v)
    elif isinstance(node, list):
        for v in node:
            local_refs(v)


def one_to_one(schemas, name, nested=None):
    """The list view of an entity: its non-array fields, plus `nested` objects."""
    nested = nested or {}
    s = copy.deepcopy(schemas[name])
    props = {}
    for k, v in s["properties"].items():
        if k in nested:
            props[k] = {
                key: v[key] for key in ("name", "title", "description") if key in v
            }
            props[k]["$ref"] = "#/components/schemas/" + nested[k]
        elif v.get("type") == "array" or "$ref" in v:
            continue
        else:
            props[k] = v
    s["properties"] = props
    return s


def with_property(schemas, name, prop, sub):
    s = copy.deepcopy(schemas[name])
    s["properties"][prop] = sub
    return s


def rewrite(spec_dir, example_ids, sdoh_domains=None):
    doc = json.loads((spec_dir / "openapi.json").read_text())
    schemas = {}
    for name in ENTITIES:
        s = json.loads((spec_dir / f"{name}.json").read_text())
        local_refs(s)
        schemas[name] = s
    schemas["organization_list"] = one_to_one(schemas, "organization")
    schemas["program_list"] = one_to_one(schemas, "program")
    schemas["location_list"] = one_to_one(schemas, "location")
    schemas["service_list"] = one_to_one(
        schemas,
        "service",
        {"organization": "organization_list", "program": "program_list"},
    )
    schemas["service_at_location_list"] = one_to_one(
        schemas, "service_at_location", {"location": "location_list"}
    )
    schemas["service_at_location_list"]["properties"]["service"] = ref("service_list")
    schemas["organization_full"] = with_property(
        schemas,
        "organization",
        "services",
        {
            "name": "services",
            "type": "array",
            "title": "Services",
            "items": ref("service"),
        },
    )
    schemas["service_at_location_full"] = with_property(
        schemas, "service_at_location", "service", ref("service")
    )
    remote = {
        "compiled/service.json": "service",
        "compiled/organization.json": "organization_full",
        "compiled/service_list.json": "service_list",
        "compiled/organization_list.json": "organization_list",
        "compiled/service_at_location_list.json": "service_at_location_list",
        "taxonomy.json": "taxonomy",
        "taxonomy_term.json": "taxonomy_term",
    }

    def remote_refs(node):
        if isinstance(node, dict):
            r = node.get("$ref")
            if isinstance(r, str) and r.startswith(REMOTE):
                rel = r[len(REMOTE) :]
                if rel not in remote:
                    sys.exit(f"hsds_openapi: no local schema for {r}")
                node["$ref"] = "#/components/schemas/" + remote[rel]
            for v in node.values():
                remote_refs(v)
        elif isinstance(node, list):
            for v in node:
                remote_refs(v)

    remote_refs(doc["paths"])
    body = doc["paths"]["/service_at_locations/{id}"]["get"]["responses"]["200"]
    body["content"]["application/json"]["schema"] = ref("service_at_location_full")

    doc["components"]["schemas"].update(schemas)
    doc["components"]["schemas"]["Error"] = ERROR
    doc["components"]["securitySchemes"] = {
        "bearer": {"type": "http", "scheme": "bearer"}
    }
    doc["security"] = [{"bearer": []}]
    doc["info"] = {
        "title": "Crossway /hsds/ (HSDS 3.0), checked against Open Referral's openapi.json",
        "version": "3.0",
    }
    error = {"application/json": {"schema": ref("Error")}}
    for path, item in doc["paths"].items():
        op = item["get"]
        if path == "/":
            op["security"] = []
            continue
        op["responses"]["401"] = {
            "description": "No or a bad bearer token.",
            "content": error,
        }
        if path.endswith("/{id}"):
            op["responses"]["404"] = {"description": "No such id.", "content": error}
            collection = path.split("/")[1]
            if collection in example_ids:
                for p in item["parameters"]:
                    if p["in"] == "path":
                        p["example"] = example_ids[collection]
    if sdoh_domains:
        param = {
            "name": "sdoh_domain",
            "in": "query",
            "required": False,
            "description": "Crossway extension: only services with a taxonomy term that"
            " means this SDOH domain (SDOHCC-CodeSystemTemporaryCodes), by the rules of"
            " mappings/directory/domains.toml.",
            "schema": {"type": "string", "enum": sdoh_domains},
        }
        for path in ("/services", "/service_at_locations"):
            op = doc["paths"][path]["get"]
            op["parameters"].append(param)
            op["responses"]["400"] = {
                "description": "An sdoh_domain without a rule.",
                "content": error,
            }
    # Nothing remote may be left.
    text = json.dumps(doc, indent=1, ensure_ascii=False)
    if REMOTE in text.replace(REMOTE + "openapi.json", ""):
        sys.exit("hsds_openapi: a remote $ref is left")
    return doc


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("spec_dir", type=pathlib.Path)
    ap.add_argument("out", type=pathlib.Path)
    ap.add_argument("--example-id", action="append", default=[], metavar="PATH=ID")
    ap.add_argument("--sdoh-domains", type=pathlib.Path, metavar="DOMAINS_TOML")
    args = ap.parse_args()
    example_ids = dict(e.split("=", 1) for e in args.example_id)
    domains = None
    if args.sdoh_domains:
        rules = tomllib.loads(args.sdoh_domains.read_text())
        domains = sorted(r["domain"] for r in rules.get("domain", []))
    doc = rewrite(args.spec_dir, example_ids, domains)
    args.out.write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
