"""Tenants: each client's domains, logins, sending pool, pause and figures kept apart."""
