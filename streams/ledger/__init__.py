"""The PostgreSQL ledger: migrations, the batched idempotent sink, reconciliation and reads.

The sink is a plain confluent-kafka consumer, not a faust agent: it needs to commit
offsets only after a database commit, pause while the database is down, and read in
large batches; faust acks on its own schedule and its aiokafka consumer is slower.
"""
