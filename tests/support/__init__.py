"""Helpers shared by the tests: servers, child processes, fault proxies, polling."""
