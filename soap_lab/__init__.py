"""soap-lab."""
