"""Exotel's wire: the client, request and response parsing (XML and JSON), errors, the simulator.

Knows nothing of the database. Exotel's field names (`CallSid`, `DateUpdated`) stay in here.
"""
