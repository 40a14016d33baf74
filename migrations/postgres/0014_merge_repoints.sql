-- What a merge re-pointed (a referral Task's `for`, its ServiceRequest's `subject`):
-- the reference before and after, so that undoing the merge (an A37 unlink or the
-- operator's unmerge) points back whatever still points where the merge left it.
CREATE TABLE merge_repoints (
    merge_id TEXT NOT NULL,
    res_type TEXT NOT NULL,
    res_id TEXT NOT NULL,
    element TEXT NOT NULL,
    before TEXT NOT NULL,
    after TEXT NOT NULL,
    PRIMARY KEY (merge_id, res_type, res_id)
);
