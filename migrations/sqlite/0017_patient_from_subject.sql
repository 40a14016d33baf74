-- `patient` is answered from `subject`'s rows on every type that has both (see
-- `ParamDef::indexed_as`): its own copies are no longer read or written.
DELETE FROM search_refs
WHERE param = 'patient'
  AND res_type IN ('Task', 'ServiceRequest', 'Procedure', 'Encounter', 'Observation',
                   'Condition', 'Goal', 'DocumentReference', 'CareTeam',
                   'QuestionnaireResponse');
