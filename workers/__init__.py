"""Deployable worker apps: the agents a deployment serves, loaded as ``workers.NAME:agents``."""
