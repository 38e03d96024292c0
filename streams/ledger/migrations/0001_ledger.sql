-- The ledger: accounts, balanced transactions, their entries (partitioned by month of
-- posting time) and per-account balances kept in the same database transaction as the
-- entries they sum. Constraints do real work; the sink validates first so that a bad
-- transaction becomes a dead letter with a readable reason, and these are the backstop.

CREATE TABLE accounts (
    account_id      text        PRIMARY KEY CHECK (account_id <> ''),
    account_type    text        NOT NULL CHECK (account_type IN ('customer', 'external', 'fx_clearing')),
    first_posted_at timestamptz NOT NULL
);

CREATE TABLE transactions (
    transaction_id   text        PRIMARY KEY CHECK (transaction_id <> ''),
    request_id       text        NOT NULL,
    payment_id       text,
    kind             text        NOT NULL,
    posted_at        timestamptz NOT NULL,
    entry_count      integer     NOT NULL CHECK (entry_count >= 2),
    -- sha256 of the transaction's canonical content: a redelivery must match it exactly.
    fingerprint      bytea       NOT NULL CHECK (length(fingerprint) = 32),
    source_topic     text        NOT NULL,
    source_partition integer     NOT NULL,
    source_offset    bigint      NOT NULL,
    written_at       timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE ledger_entries (
    entry_id       text        NOT NULL CHECK (entry_id <> ''),
    -- Must name a row of transactions: checked per statement by the trigger below, which
    -- is several times cheaper on a batch COPY than a row-by-row foreign key.
    transaction_id text        NOT NULL,
    account_id     text        NOT NULL,
    direction      text        NOT NULL CHECK (direction IN ('DEBIT', 'CREDIT')),
    amount_minor   bigint      NOT NULL CHECK (amount_minor > 0),
    currency       text        NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    fx_rate        numeric     CHECK (fx_rate IS NULL OR fx_rate > 0),
    posted_at      timestamptz NOT NULL,
    -- A unique index on a partitioned table must include the partition key. An entry id
    -- is unique on its own because it is derived from its transaction id, which is the
    -- primary key of transactions, and every entry carries its transaction's posted_at.
    PRIMARY KEY (entry_id, posted_at)
) PARTITION BY RANGE (posted_at);

-- history: an account's entries, newest first.
CREATE INDEX ledger_entries_account_idx ON ledger_entries (account_id, posted_at DESC, entry_id);

CREATE TABLE account_balances (
    account_id    text        NOT NULL REFERENCES accounts (account_id),
    currency      text        NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    -- credits minus debits: for a customer, available plus held in the workers.
    balance_minor bigint      NOT NULL,
    debits_minor  bigint      NOT NULL CHECK (debits_minor >= 0),
    credits_minor bigint      NOT NULL CHECK (credits_minor >= 0),
    entry_count   bigint      NOT NULL CHECK (entry_count >= 0),
    updated_at    timestamptz NOT NULL,
    PRIMARY KEY (account_id, currency),
    CHECK (balance_minor = credits_minor - debits_minor)
) WITH (fillfactor = 70);  -- room on each page for HOT updates of hot balances

-- Every INSERT statement into ledger_entries must carry whole, balanced transactions:
-- per transaction, debits equal credits in every currency, the transaction exists in
-- transactions, and the statement holds exactly its declared number of entries. Checked once per statement
-- over the inserted rows, so a batch COPY pays one aggregate, not a check per row.
CREATE FUNCTION ledger_entries_balanced() RETURNS trigger LANGUAGE plpgsql AS $$
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
    SELECT c.transaction_id, c.inserted, t.entry_count INTO bad
    FROM (SELECT transaction_id, count(*) AS inserted FROM new_rows GROUP BY transaction_id) AS c
    LEFT JOIN transactions AS t USING (transaction_id)
    WHERE t.entry_count IS DISTINCT FROM c.inserted
    LIMIT 1;
    IF FOUND AND bad.entry_count IS NULL THEN
        RAISE EXCEPTION 'entries of unknown transaction %: insert the transaction first',
            bad.transaction_id
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    IF FOUND THEN
        RAISE EXCEPTION 'incomplete transaction %: % entries inserted, % declared',
            bad.transaction_id, bad.inserted, bad.entry_count
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER ledger_entries_balanced
    AFTER INSERT ON ledger_entries
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_entries_balanced();

-- The ledger is append-only: entries and transactions are never changed or removed.
CREATE FUNCTION ledger_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the ledger is append-only: % on % is not allowed', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END;
$$;

CREATE TRIGGER ledger_entries_append_only BEFORE UPDATE OR DELETE ON ledger_entries
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_append_only();
CREATE TRIGGER transactions_append_only BEFORE UPDATE OR DELETE ON transactions
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_append_only();
