"""Time travel: replay a past run against other code and see what would change, fork
it into a new live run from a chosen step, export its history as a file.

A layer of its own, between the runtime (whose ``Context`` and slot rules it reuses)
and the client (which offers it as ``app.replay`` / ``app.fork`` / ``app.export``).
"""
