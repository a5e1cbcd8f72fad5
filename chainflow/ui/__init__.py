"""``chainflow ui``: a web dashboard over the worker's database (runs, a run's timeline,
submissions with live confirmations, chains and reorgs, charts).

Server-rendered (Starlette + Jinja2, htmx vendored under ``static/``, server-sent
events for the live parts): nothing to build, nothing fetched from elsewhere.  It sits
with the other entry points: it reads through the client API and the stores' read
functions, never SQL of its own, and it is read-only unless started with a token;
see ``server`` for the safety rules.
"""
