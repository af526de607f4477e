"""Test helpers shared by the test suite, the end-to-end tests and the demo (not used in production)."""
