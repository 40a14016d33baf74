
-- A Patient's measure facts follow its person (see above).
CREATE FUNCTION measure_facts_follow_person() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        IF OLD.system = 'urn:crossway:patient' THEN
            UPDATE measure_facts SET person_id = NULL WHERE patient_id = OLD.value;
        END IF;
    ELSIF NEW.system = 'urn:crossway:patient' THEN
        UPDATE measure_facts SET person_id = NEW.person_id
        WHERE patient_id = NEW.value AND person_id IS DISTINCT FROM NEW.person_id;
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER measure_facts_follow_person AFTER INSERT OR DELETE OR UPDATE OF person_id
ON person_identifiers FOR EACH ROW EXECUTE FUNCTION measure_facts_follow_person();
