"""fleetgate's HTTP API for dashboards (see the HTTP API issue; not built yet)."""
