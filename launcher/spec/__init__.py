"""The fleet spec: the one typed launch request that every front end builds and the supervisor
runs as given (DESIGN.md, "Fleet spec")."""
