-- The answer-by time as the Task states it (`Task.restriction.period.end`): a date stays
-- a date for the CBO. `respond_by` (microseconds, the end of that date or instant) is
-- what the expiry sweep compares.
ALTER TABLE referrals ADD COLUMN respond_by_text TEXT;
