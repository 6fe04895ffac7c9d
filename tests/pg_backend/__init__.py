"""A custom Django database backend for the tests (ENGINE "tests.pg_backend")."""
