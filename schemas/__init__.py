"""Avro contracts for every topic and the codec that speaks the Confluent wire format."""
