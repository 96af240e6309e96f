"""The domain: placing calls, the status state machine, callbacks."""
