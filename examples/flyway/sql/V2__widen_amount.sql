-- PostgreSQL refuses this while payment_totals exists: run Flyway through
-- `viewkeeper run --drop-first -- flyway migrate`.
ALTER TABLE payments ALTER COLUMN amount TYPE numeric(15,2);
