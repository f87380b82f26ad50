"""viewkeeper: keeps PostgreSQL views and materialized views equal to declared files.

The package holds the `viewkeeper` binary (installed into the environment's scripts folder)
and `viewkeeper.django`, the Django app. Run the binary with `viewkeeper --help`.
"""
