"""Tunnel session mode across connections: the concentrator's session table, one
session's paths (tags, scheduler, reorder buffer), inferring which access a connection is on."""
