"""Dataset adapters: one YAML per edit dataset layout (`ingest.adapter=<name>`), shipped as package data."""
