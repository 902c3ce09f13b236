"""Pure planning: Inventory + ModelSpec + Workload -> ranked layouts with memory and speed."""
