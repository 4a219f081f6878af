"""Storage behind small interfaces: metadata (tenants, keys) and events."""
