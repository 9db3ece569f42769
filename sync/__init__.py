"""Moving recordings and fleet state over MQTT, and the central store."""
