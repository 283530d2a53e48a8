-- 260_msg_seq_no_keys: the part of a split transport message (CEB507/509/607: key2 is copNo, US, msgSeqNo) is kept
-- in the key as the number (gateway.messages.MessageType.stored_key), so that a part written "01" is found by the
-- receipt naming part 1. Keys stored before as written are rewritten so. A current document whose number another
-- current document of its type and sender already holds keeps its key (the unique current key): the two were
-- accepted as two documents and stay so.
WITH fixed AS (
    SELECT d.id, d.message_type, d.key1, d.is_current,
           regexp_replace(d.key2, chr(31) || '\+?0*([0-9]+)$', chr(31) || '\1') AS key2
      FROM documents AS d
     WHERE d.message_type IN ('CEB507', 'CEB509', 'CEB607') AND d.key2 ~ (chr(31) || '(\+|0+[0-9])[0-9]*$')
), kept AS (
    SELECT f.id FROM fixed AS f
     WHERE f.is_current
       AND (EXISTS (SELECT 1 FROM documents AS c
                     WHERE c.message_type = f.message_type AND c.key1 = f.key1 AND c.key2 = f.key2 AND c.is_current)
            OR EXISTS (SELECT 1 FROM fixed AS g
                        WHERE g.message_type = f.message_type AND g.key1 = f.key1 AND g.key2 = f.key2 AND g.is_current
                          AND g.id < f.id))
)
UPDATE documents AS d SET key2 = f.key2
  FROM fixed AS f
 WHERE d.id = f.id AND f.id NOT IN (SELECT id FROM kept);
