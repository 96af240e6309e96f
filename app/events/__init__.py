"""Telling the services that asked: the event feed, webhook endpoints and delivery."""
