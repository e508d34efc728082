"""Run types: statuses (`kern.run.base`) and events and outputs (`kern.run.agent`)."""
