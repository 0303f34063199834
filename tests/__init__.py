"""Tests for hermes_tx."""
