"""Database schema and sessions. Imports nothing else of the app."""
