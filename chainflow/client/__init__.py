"""Client layer: ``Chainflow``, the registry of workflows plus the client half of the
engine.  Imports every layer below it."""
