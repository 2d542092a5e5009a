"""Use cases. Each public method runs in one unit of work and records audit events in
the same transaction as the change it describes."""
