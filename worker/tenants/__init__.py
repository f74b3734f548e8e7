"""Tenants and their API keys: create, list, revoke, and resolve a key to its tenant.

``names`` validates what callers choose (tenant names, end-user ids), ``keys`` manages
tenants and keys (the CLI's ``imagegen tenant``), ``resolve`` turns a bearer key or a tenant
name into the tenant a request acts for (the HTTP API, ``enqueue``).
"""
