"""Autobahn|Testsuite conformance runs (see README.md here)."""
