-- Overdue secrets are announced once per rotation period: the daemon's periodic check emits an
-- outbox event `secret.overdue` for each scheduled secret past its due time whose
-- `overdue_notified_at` is null, and sets it in the same statement. Giving the secret a new value
-- (set or rotate) clears it, so the next period is announced again.

ALTER TABLE appliance.secrets ADD COLUMN overdue_notified_at timestamptz;
