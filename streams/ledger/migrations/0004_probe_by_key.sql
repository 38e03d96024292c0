-- Per-batch lookups of transactions by key, whatever the ledger's size.
--
-- The balance check looked up each inserted transaction's declared entry count with a
-- join, and PostgreSQL planned it as a hash join over a sequential scan of the whole
-- transactions table: every batch then read every transaction ever written, so the
-- sink slowed down as the ledger grew (46 batches of 1,000,000 entries scanned ~10
-- million rows). A scalar subquery per inserted transaction is always an index probe
-- on the primary key: the cost of a batch depends on the batch, not on the ledger.

CREATE OR REPLACE FUNCTION ledger_entries_balanced() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    bad record;
BEGIN
    SELECT n.transaction_id, n.currency, n.net INTO bad
    FROM (
        SELECT transaction_id, currency,
               sum(CASE direction WHEN 'CREDIT' THEN amount_minor ELSE -amount_minor END) AS net
        FROM new_rows GROUP BY transaction_id, currency
    ) AS n
    WHERE n.net <> 0
    LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'unbalanced transaction %: postings in % do not sum to zero (net %)',
            bad.transaction_id, bad.currency, bad.net
            USING ERRCODE = 'check_violation';
    END IF;
    SELECT c.transaction_id, c.inserted, c.declared INTO bad
    FROM (
        SELECT r.transaction_id, count(*) AS inserted,
               (SELECT t.entry_count FROM transactions AS t
                WHERE t.transaction_id = r.transaction_id) AS declared
        FROM new_rows AS r GROUP BY r.transaction_id
    ) AS c
    WHERE c.declared IS DISTINCT FROM c.inserted
    LIMIT 1;
    IF FOUND AND bad.declared IS NULL THEN
        RAISE EXCEPTION 'entries of unknown transaction %: insert the transaction first',
            bad.transaction_id
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    IF FOUND THEN
        RAISE EXCEPTION 'incomplete transaction %: % entries inserted, % declared',
            bad.transaction_id, bad.inserted, bad.declared
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END;
$$;
