"""Storage layer: the only code that speaks SQL about runs (schema and migrations,
connector, payload codec, runs store, group-commit writer, ``Database`` gateway).

Imports the base modules only."""
