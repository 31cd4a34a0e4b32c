"""The durable ledger: Postgres tables, the stream writer, rehydration, reconciliation."""
