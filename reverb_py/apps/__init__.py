"""Where apps come from: the configured ones (flags, environment, TOML) or a SQL table that
the server keeps current without a restart (see docs/apps-database.md)."""
