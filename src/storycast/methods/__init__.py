"""Story methods: each one a thin pipeline over the shared parts, registered by name."""
