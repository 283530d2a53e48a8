-- Transmissions of a message = the queue jobs that carry its guid in their payload, whatever the
-- endpoint or the dedupe-key convention (customs:<guid>, customs:<guid>:resend<n>, warehouse:<guid>:<i>).
-- The API's shipment detail and the operators' console both look jobs up this way.
CREATE INDEX jobs_message_guid_idx ON jobs ((payload ->> 'guid')) WHERE payload ? 'guid';
