-- PostgreSQL only (migrations/postgres-extra): the trigger of 0025 plans its UPDATE at
-- each call. Nothing changes on SQLite, whose triggers are planned per statement.
SELECT 1;

-- The trigger's UPDATE planned at each call (EXECUTE … USING): the plan PL/pgSQL cached
-- while measure_facts was small (a sequential scan) stayed in use as the table grew,
-- and new-patient intake fell with its size (measured over MLLP, A08 for new patients:
-- 1,290 then 620 msg/s in two 8 s runs; with this, 2,114 then 1,928).
CREATE OR REPLACE FUNCTION measure_facts_follow_person() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        IF OLD.system = 'urn:crossway:patient' THEN
            EXECUTE 'UPDATE measure_facts SET person_id = NULL WHERE patient_id = $1' USING OLD.value;
        END IF;
    ELSIF NEW.system = 'urn:crossway:patient' THEN
        EXECUTE 'UPDATE measure_facts SET person_id = $1 WHERE patient_id = $2 AND person_id IS DISTINCT FROM $1'
            USING NEW.person_id, NEW.value;
    END IF;
    RETURN NULL;
END $$;
