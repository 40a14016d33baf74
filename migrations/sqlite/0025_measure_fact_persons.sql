-- Each measure fact names the person its Patient belongs to now (`person_id`; NULL
-- while the Patient has none), so that an evaluation counts facts per person in SQL
-- from the indexes alone instead of joining `person_identifiers` fact by fact. A fact
-- takes its Patient's person when written (`store::measures`); the triggers below
-- repoint a Patient's facts whenever its person changes: its identifier written
-- (facts may come first), a merge, an undone merge. (An identifier's system and
-- value never change.)
ALTER TABLE measure_facts ADD COLUMN person_id TEXT;
UPDATE measure_facts SET person_id = (SELECT i.person_id FROM person_identifiers i
    WHERE i.system = 'urn:crossway:patient' AND i.value = measure_facts.patient_id);
DROP INDEX measure_facts_kind_at;
-- Covering: a range of one kind's facts is read from the index alone.
CREATE INDEX measure_facts_kind_at ON measure_facts (kind, domain, at, person_id, until, value);
CREATE INDEX measure_facts_person ON measure_facts (person_id, kind, domain, at);

-- sqlite only {
CREATE TRIGGER measure_facts_person_added AFTER INSERT ON person_identifiers
WHEN NEW.system = 'urn:crossway:patient'
BEGIN
    UPDATE measure_facts SET person_id = NEW.person_id
    WHERE patient_id = NEW.value AND person_id IS NOT NEW.person_id;
END;
CREATE TRIGGER measure_facts_person_moved AFTER UPDATE OF person_id ON person_identifiers
WHEN NEW.system = 'urn:crossway:patient'
BEGIN
    UPDATE measure_facts SET person_id = NEW.person_id
    WHERE patient_id = NEW.value AND person_id IS NOT NEW.person_id;
END;
CREATE TRIGGER measure_facts_person_removed AFTER DELETE ON person_identifiers
WHEN OLD.system = 'urn:crossway:patient'
BEGIN
    UPDATE measure_facts SET person_id = NULL WHERE patient_id = OLD.value;
END;
-- }
