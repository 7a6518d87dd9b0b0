"""Layer 0-3 data: datasets and the built-in synthetic world."""
