"""Snapshots: a running machine saved to a directory (``take``), and a
machine built from one (``restore``); the state file's format
(``format``) and how it lies on disk (``store``)."""
