"""`exocall call` and `exocall campaign`: the command line as a client of a running exocall.

Nothing here touches the database or Exotel: every call goes through the service's own HTTP API,
so the CLI meets the same validation, idempotency and rate limit as any other caller.
"""
