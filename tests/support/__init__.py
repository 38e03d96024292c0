"""Test support: real worker processes and topic readers for integration tests."""
