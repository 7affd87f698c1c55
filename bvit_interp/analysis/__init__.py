"""Analyses: pure functions from (model, data, options) to tidy tables; CLI, notebooks and app sit on top."""
