"""fleetgate's ingestion gateway: device telemetry from MQTT into PostgreSQL, nothing lost."""
