#!/usr/bin/env python3
"""Seeds a migrated Crossway SQLite file for bench/measures: persons with one Patient
each (person_identifiers), and measure facts as the engine records them — a birth date
per Patient, a referral (ServiceRequest) per person with a CBO contact for 40 % of them,
screening facts (screened, 30 % of them also positive) over five domains, and
encounters (80 % ED visits, 20 % inpatient stays) — spread over 2026.

    measures-seed.py DB REFERRALS SCREENS ENCOUNTERS
"""
import random
import sqlite3
import sys

db, referrals, screens, encounters = sys.argv[1], *(int(x) for x in sys.argv[2:5])
rng = random.Random(42)
YEAR0, DAY = 1767225600 * 1_000_000, 86_400 * 1_000_000
DOMAINS = ["food-insecurity", "housing-instability", "transportation-insecurity",
           "utility-insecurity", "intimate-partner-violence"]
conn = sqlite3.connect(db)
conn.execute("PRAGMA journal_mode=WAL")
conn.execute("PRAGMA synchronous=OFF")

def when():
    return YEAR0 + rng.randrange(365 * DAY)

def batches(rows, n=50_000):
    batch = []
    for r in rows:
        batch.append(r)
        if len(batch) == n:
            yield batch
            batch = []
    if batch:
        yield batch

persons = referrals
for b in batches((("urn:crossway:patient", f"p{i}", f"person{i}", None, "fhir", 0, 0) for i in range(persons))):
    conn.executemany("INSERT INTO person_identifiers (system, value, person_id, id_type, source, retired, created_at) VALUES (?,?,?,?,?,?,?)", b)
for b in batches(((f"person{i}", f"ref{i}", None, 0, 0) for i in range(persons))):
    conn.executemany("INSERT INTO persons (id, client_ref, merged_into, created_at, updated_at) VALUES (?,?,?,?,?)", b)
# Each fact with its Patient's person, as `store::measures` writes it.
FACT = "INSERT INTO measure_facts (res_type, res_id, kind, domain, patient_id, at, until, value, organization, detail, person_id) VALUES (?,?,?,?,?,?,?,?,?,?,?)"

def facts():
    for i in range(persons):
        yield ("Patient", f"p{i}", "born", "", f"p{i}", YEAR0 - rng.randrange(90 * 365) * DAY, None, None, None, None)
    for i in range(referrals):
        d, at = DOMAINS[i % 3], when()
        yield ("ServiceRequest", f"sr{i}", "referral", d, f"p{i}", at, None, None, None, None)
        if rng.random() < 0.4:
            yield ("Task", f"t{i}", "contact", d, f"p{i}", at + rng.randrange(60 * DAY), None, None, None, None)
    for j in range(screens):
        p, d, at = f"p{rng.randrange(persons)}", DOMAINS[j % 5], when()
        yield ("Observation", f"o{j}", "screened", d, p, at, None, None, None, None)
        if rng.random() < 0.3:
            yield ("Observation", f"o{j}", "positive", d, p, at, None, None, None, None)
    for k in range(encounters):
        p, at = f"p{rng.randrange(persons)}", when()
        if rng.random() < 0.8:
            yield ("Encounter", f"e{k}", "ed", "", p, at, at + DAY // 4, None, None, None)
        else:
            yield ("Encounter", f"e{k}", "inpatient", "", p, at, at + rng.randrange(1, 10) * DAY, None, None, None)

n = 0
for b in batches(f + ("person" + f[4][1:],) for f in facts()):
    conn.executemany(FACT, b)
    n += len(b)
conn.commit()
conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
conn.close()
print(f"seeded {persons:,} persons and {n:,} facts", file=sys.stderr)
