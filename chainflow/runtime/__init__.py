"""Runtime layer: executing runs -- worker, executor, context, group committer,
workflow registry.

Imports chain, storage and the base modules; reaches its app through
``worker.WorkerHost``, never the client."""
