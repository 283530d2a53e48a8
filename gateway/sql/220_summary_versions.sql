-- Every version of a summary application (CEB701, kind 'summary') by its key (agentCode, copNo): the summary view
-- (GET /v1/summaries/{agentCode}/{copNo}) lists them all, and documents_current_key_idx holds only the current one.
-- Partial: no import or other export row enters it.
CREATE INDEX IF NOT EXISTS documents_summary_key_idx ON documents (key1, key2) WHERE kind = 'summary';
