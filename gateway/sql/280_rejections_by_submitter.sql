-- A submitter's own refused messages, newest first (GET /v1/rejections with a submitter's key, or an operator's
-- ?submitter=): one range of this index, however many other submitters' refusals the table holds.
CREATE INDEX IF NOT EXISTS rejected_messages_submitter_idx ON rejected_messages (submitter, id);
