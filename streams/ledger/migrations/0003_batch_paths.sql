-- Two changes that let a batch write set-wise what it wrote row by row.
--
-- 1. Entries go straight into their month partition.
--
-- The sink COPYs each batch straight into the month partitions of ledger_entries. A
-- COPY into the partitioned parent must insert row by row, because the parent has a
-- trigger with a transition table (PostgreSQL's copyfrom.c: no multi-insert buffers
-- for partition routing with such triggers); into a partition it inserts a page at a
-- time. Statement triggers fire only for the table a statement names, so every
-- partition carries the parent's two guards itself: whole balanced transactions on
-- INSERT, and append-only. The partitions are made by ledger_ensure_month, which adds
-- both guards; this migration adds them to the partitions that already exist.

CREATE FUNCTION ledger_guard_partition(part regclass) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_trigger
                   WHERE tgrelid = part AND tgname = 'ledger_entries_balanced') THEN
        EXECUTE format('CREATE TRIGGER ledger_entries_balanced AFTER INSERT ON %s '
                       'REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT '
                       'EXECUTE FUNCTION ledger_entries_balanced()', part);
    END IF;
    IF NOT EXISTS (SELECT FROM pg_trigger
                   WHERE tgrelid = part AND tgname = 'ledger_entries_append_only') THEN
        EXECUTE format('CREATE TRIGGER ledger_entries_append_only BEFORE UPDATE OR DELETE '
                       'ON %s FOR EACH STATEMENT EXECUTE FUNCTION ledger_append_only()', part);
    END IF;
END;
$$;

-- The partition holding the month that starts at first_day (UTC), created and guarded
-- if needed; returns its name. Safe to call concurrently: a session that loses the race
-- to create the table or a trigger finds it made.
CREATE FUNCTION ledger_ensure_month(first_day timestamptz) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    start_utc timestamp := first_day AT TIME ZONE 'UTC';
    name text := to_char(start_utc, '"ledger_entries_y"YYYY"m"MM');
BEGIN
    IF start_utc <> date_trunc('month', start_utc) THEN
        RAISE EXCEPTION 'ledger_ensure_month: % is not the first instant of a UTC month',
            first_day USING ERRCODE = 'invalid_parameter_value';
    END IF;
    BEGIN
        EXECUTE format('CREATE TABLE IF NOT EXISTS %I PARTITION OF ledger_entries '
                       'FOR VALUES FROM (%L) TO (%L)', name,
                       start_utc AT TIME ZONE 'UTC',
                       (start_utc + interval '1 month') AT TIME ZONE 'UTC');
    EXCEPTION WHEN duplicate_table THEN
        NULL;  -- created by a concurrent session since our IF NOT EXISTS looked
    END;
    BEGIN
        PERFORM ledger_guard_partition(name::regclass);
    EXCEPTION WHEN duplicate_object THEN
        PERFORM ledger_guard_partition(name::regclass);
    END;
    RETURN name;
END;
$$;

DO $$
DECLARE
    part regclass;
BEGIN
    FOR part IN SELECT inhrelid::regclass FROM pg_inherits
                WHERE inhparent = 'ledger_entries'::regclass LOOP
        PERFORM ledger_guard_partition(part);
    END LOOP;
END;
$$;

-- 2. account_balances -> accounts, checked per statement.
--
-- A foreign key checks each inserted balance with its own query, which also share-locks
-- the account row (a WAL record per balance). The writer inserts thousands of balances
-- per statement, so the same rule is checked once per statement over the inserted rows,
-- as ledger_entries -> transactions already is. What the foreign key also guaranteed is
-- kept by other means: accounts are append-only (an account with a balance cannot be
-- removed), and a balance's key columns never change.

ALTER TABLE account_balances DROP CONSTRAINT account_balances_account_id_fkey;

CREATE FUNCTION account_balances_known_accounts() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    missing text;
BEGIN
    SELECT n.account_id INTO missing FROM new_rows AS n
    WHERE NOT EXISTS (SELECT FROM accounts AS a WHERE a.account_id = n.account_id)
    LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'balance of unknown account %: insert the account first', missing
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER account_balances_known_accounts
    AFTER INSERT ON account_balances
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION account_balances_known_accounts();

CREATE FUNCTION ledger_keys_fixed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the key columns of % never change', TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END;
$$;

CREATE TRIGGER account_balances_keys_fixed
    BEFORE UPDATE OF account_id, currency ON account_balances
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_keys_fixed();
CREATE TRIGGER accounts_append_only BEFORE UPDATE OR DELETE ON accounts
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_append_only();
