"""The one way work is run later: dispatch, webhook delivery, the recording archive,
reconciliation, the spool's replay and the retentions are each a `Kind` that a `Runner` works.

- A kind's queue is its own rows (a call, a delivery, a recording's job): a claim is the pair
  `claimed_by` (the worker) and `claimed_at` on the row, taken with SKIP LOCKED.
- A claim lives as long as its worker's heartbeat (`worker`): every process beats every few
  seconds, and every process that works a kind finds the kind's claims of workers that stopped
  beating and hands them to the kind as lost. On SIGTERM a worker gives back what it holds
  before it goes.
- A run holds no transaction: it returns an outcome, and the runner records the outcomes that
  came in together in one transaction, retried while the database is down.
"""
