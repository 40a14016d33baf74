-- Events that are about a webhook endpoint rather than a referral
-- (`webhook.endpoint_disabled`): the endpoint's id; `referral_id` is empty for them.
ALTER TABLE events ADD COLUMN endpoint_id TEXT;
