-- Patient `name` is answered from its own rows and from `family`'s and `given`'s (see
-- `ParamDef::also`): its copies of those parts are no longer written.
DELETE FROM search_strings
WHERE res_type = 'Patient'
  AND param = 'name'
  AND EXISTS (
      SELECT 1 FROM search_strings AS part
      WHERE part.res_type = 'Patient'
        AND part.param IN ('family', 'given')
        AND part.value = search_strings.value
        AND part.res_id = search_strings.res_id
  );
