"""exocall: place Exotel calls and keep their state."""
