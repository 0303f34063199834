"""Test-support code (throwaway PostgreSQL clusters)."""
