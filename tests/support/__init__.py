"""Helpers of the test suites (and of the benches that compare with them): model and
checkpoint writers, reference implementations, oracles and peers, the server under test."""
