"""Recordings kept: fetched from Exotel with the account's credentials, stored before Exotel's
copy expires, served to those allowed (docs/recordings.md)."""
