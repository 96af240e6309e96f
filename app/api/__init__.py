"""Thin HTTP routes over the domain in app/calls."""
