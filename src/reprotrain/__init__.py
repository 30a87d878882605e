"""reprotrain."""
