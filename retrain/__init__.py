"""Materialise, train, merge and export a chosen subnet."""
