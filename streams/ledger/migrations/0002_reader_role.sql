-- Reads (`paystream ledger balance|history|reconcile`) run as this role in read-only
-- transactions, so a reporting query can never change the ledger.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'paystream_reader') THEN
        CREATE ROLE paystream_reader NOLOGIN;
    END IF;
END;
$$;

GRANT USAGE ON SCHEMA public TO paystream_reader;
GRANT SELECT ON accounts, transactions, ledger_entries, account_balances TO paystream_reader;
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO paystream_reader;
-- The migrating (owner) role may switch to the reader for its own reads.
DO $$
BEGIN
    EXECUTE format('GRANT paystream_reader TO %I', current_user);
END;
$$;
