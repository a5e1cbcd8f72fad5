"""Chain layer: the chain-agnostic submission protocol, adapter protocols, the
submissions and headers stores, finality policies, head tracking and reorgs.

Imports storage and the base modules; reaches the run it serves through
``scope.RunScope``, never the runtime."""
