"""Chain adapters: each plugs a chain into chainflow's ``ChainAdapter`` interface."""
