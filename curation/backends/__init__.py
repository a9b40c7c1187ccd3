"""Model adapters (DESIGN.md §7): small protocols with implementations chosen by config. Each
loads from a hub id or a local path; `models.resolve_model` also builds the tiny random models
of the `models=tiny` profile."""
