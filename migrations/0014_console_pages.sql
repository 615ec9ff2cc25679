-- The console's task timeline and the API's audit search by task read a task's entries from
-- both chains it writes to (its own, and its tenant's for votes and decisions): by task_id, not
-- a scan of the whole log.
CREATE INDEX audit_entries_task ON appliance.audit_entries (task_id) WHERE task_id IS NOT NULL;
