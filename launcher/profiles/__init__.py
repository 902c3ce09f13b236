"""TOML profiles: hardware profiles (boxes to plan for) and launch profiles (fleet specs)."""
