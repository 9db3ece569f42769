"""The reference central store service and its CLI."""
