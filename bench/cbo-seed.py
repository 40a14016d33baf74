"""Seeds a gateway with referrals for the CBO benchmark and writes the Lua tables the
wrk scripts read.

    python3 bench/cbo-seed.py BASE_URL REFERRALS ORGS OUT_DIR

Posts transaction Bundles of 100 referrals (Patient, ServiceRequest, Task each; five
referrals per Patient), four at a time, to BASE_URL/fhir; referral i is owned by
organisation cbo-bench-(i mod ORGS). Then lists every organisation's referrals over the
CBO API and writes OUT_DIR/ids.txt: one `organisation referral-id` pair per line, in a
shuffled order (a Lua table literal of 100,000 entries is too large for LuaJIT).
"""
import concurrent.futures
import json
import os
import random
import sys
import time
import urllib.error
import urllib.request

base, total, orgs, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
PER_BUNDLE = 100
TASK = "http://hl7.org/fhir/us/sdoh-clinicalcare/StructureDefinition/SDOHCC-TaskForReferralManagement"
SDOHCC = "http://hl7.org/fhir/us/sdoh-clinicalcare/CodeSystem/SDOHCC-CodeSystemTemporaryCodes"
DOMAINS = ["food-insecurity", "housing-instability", "transportation-insecurity", "financial-insecurity"]


def org(i):
    return f"cbo-bench-{i % orgs:02d}"


def bundle(start):
    entries = []
    for i in range(start, min(start + PER_BUNDLE, total)):
        p = f"urn:uuid:00000000-0000-4000-8000-{i // 5:012d}"
        if i % 5 == 0:
            entries.append({"fullUrl": p, "request": {"method": "POST", "url": "Patient"}, "resource": {
                "resourceType": "Patient", "name": [{"family": f"Client{i // 5}", "given": ["Sam"]}],
                "telecom": [{"system": "phone", "value": f"555-{i:07d}"}], "birthDate": "1970-01-01"}})
        sr = f"urn:uuid:00000000-0000-4000-9000-{i:012d}"
        entries.append({"fullUrl": sr, "request": {"method": "POST", "url": "ServiceRequest"}, "resource": {
            "resourceType": "ServiceRequest", "status": "active", "intent": "order",
            "category": [{"coding": [{"system": SDOHCC, "code": DOMAINS[i % 4]}]}],
            "code": {"coding": [{"system": "http://snomed.info/sct", "code": "467771000124109"}]},
            "subject": {"reference": p}, "requester": {"reference": "Organization/hospital-st-mary"}}})
        entries.append({"request": {"method": "POST", "url": "Task"}, "resource": {
            "resourceType": "Task", "meta": {"profile": [TASK]}, "status": "requested", "intent": "order",
            "priority": "urgent" if i % 10 == 0 else "routine",
            "code": {"coding": [{"system": "http://hl7.org/fhir/CodeSystem/task-code", "code": "fulfill"}]},
            "focus": {"reference": sr}, "for": {"reference": p}, "authoredOn": "2026-11-23",
            "requester": {"reference": "Organization/hospital-st-mary"},
            "owner": {"reference": f"Organization/{org(i)}"}}})
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


def post(start):
    body = json.dumps(bundle(start)).encode()
    req = urllib.request.Request(f"{base}/fhir", body, {"Content-Type": "application/fhir+json",
                                                        "Authorization": "Bearer " + os.environ["TOKEN"]})
    # 503 + Retry-After: the batch was rolled back (e.g. a deadlock between two
    # transactions on PostgreSQL); clients are told to send it again.
    for attempt in range(10):
        try:
            with urllib.request.urlopen(req, timeout=120) as r:
                r.read()
                return
        except urllib.error.HTTPError as e:
            if e.code != 503 or attempt == 9:
                raise
            time.sleep(float(e.headers.get("Retry-After", "1")))


t0 = time.time()
with concurrent.futures.ThreadPoolExecutor(4) as pool:
    list(pool.map(post, range(0, total, PER_BUNDLE)))
print(f"seeded {total} referrals in {time.time() - t0:.1f} s", file=sys.stderr)

pairs = []
for o in range(orgs):
    name, cursor = org(o), None
    while True:
        url = f"{base}/cbo/v1/referrals?limit=200" + (f"&cursor={cursor}" if cursor else "")
        req = urllib.request.Request(url, headers={"X-Crossway-Organization": name})
        page = json.load(urllib.request.urlopen(req))
        pairs += [(name, r["id"]) for r in page["data"]]
        if not page["has_more"]:
            break
        cursor = page["next_cursor"]
random.Random(7).shuffle(pairs)
with open(f"{out}/ids.txt", "w") as f:
    f.writelines(f"{o} {i}\n" for o, i in pairs)
print(f"listed {len(pairs)} referrals", file=sys.stderr)
