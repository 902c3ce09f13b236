"""TOML profiles: hardware profiles (boxes to plan for) and, later, launch profiles."""
